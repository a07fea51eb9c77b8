// Packed quantized weights against x rounded to int8 (the opt-in int8 path, or its default
// where kernels.quant_method says so), compiled once per ISA. AVX2 and up.
//
// x is rounded per block of 32 elements (a float scale d each, as llama.cpp's q8 blocks). A
// lane of a packed word holds 4 (8-bit) or 8 (4-bit) codes of one row; one integer dot
// product (vpdpbusd with AVX512-VNNI, else vpmaddubsw + vpmaddwd) multiplies those 4 bytes
// by 4 bytes of x broadcast to every lane, for 16 rows at once: 64 products an instruction
// where the float path does 16. Sums within a block are exact int32; the blocks and groups
// are then summed in float in a fixed order, so rows stay batch-invariant.
//
// The codes meet x uncentred; the centring c = 2^(bits-1) returns through
// corr = sum(x) - sum(d * x_q) per group: s * sum(q * d x_q) + c s corr + b sum(x) =
// s * sum((q - c) d x_q) + (b + c s) sum(x), the int8 path's documented form and error bound.
#include "packed.h"

#include "variant.h"

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

#if defined(__AVX2__)
namespace {

constexpr int QB = 32;  // elements of x per int8 block
constexpr int H = kPackRows / VL;
constexpr int kMaxRows = VECTOR_BYTES == 64 ? 4 : 1;

// The prepared x, carved out of the scratch buffer.
struct View {
  int8_t* q;    // [M, K]; 4-bit: each 8 elements as [even 4, odd 4]
  float* d;     // [M, K / QB] block scales
  float* xsum;  // [M, groups] sums of x
  float* corr;  // [M, groups] sum(x) - sum(d * x_q)
};

size_t align64(size_t n) {
  return (n + 63) & ~size_t(63);
}

View view(void* base, size_t M, size_t K, size_t groups) {
  auto* p = static_cast<uint8_t*>(base);
  View v;
  v.q = reinterpret_cast<int8_t*>(p);
  p += align64(M * K);
  v.d = reinterpret_cast<float*>(p);
  p += align64(M * (K / QB) * 4);
  v.xsum = reinterpret_cast<float*>(p);
  p += align64(M * groups * 4);
  v.corr = reinterpret_cast<float*>(p);
  return v;
}

// acc + per lane, the sum of its 4 unsigned bytes of w times the 4 signed bytes of x4.
inline vi dot4(vi acc, vu w, int32_t x4) {
#if defined(__AVX512VNNI__) && VECTOR_BYTES == 64
  return (vi)_mm512_dpbusd_epi32((__m512i)acc, (__m512i)w, _mm512_set1_epi32(x4));
#elif defined(__AVX512BW__) && VECTOR_BYTES == 64
  const __m512i p16 = _mm512_maddubs_epi16((__m512i)w, _mm512_set1_epi32(x4));
  return acc + (vi)_mm512_madd_epi16(p16, _mm512_set1_epi16(1));
#else
  // 4-bit only: pair sums of 15 * 127 * 2 cannot saturate 16 bits.
  const __m256i p16 = _mm256_maddubs_epi16((__m256i)w, _mm256_set1_epi32(x4));
  return acc + (vi)_mm256_madd_epi16(p16, _mm256_set1_epi16(1));
#endif
}

inline int32_t quad(const int8_t* p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

template <int BITS, int MT, ScalarType S>
void int8_tile(const QuantArgs& a, const View& v, int tile, int m0) {
  constexpr int PER = 32 / BITS, WORDS = QB / PER;  // words of a row per block of x
  constexpr float c = 1 << (BITS - 1);
  const size_t K = a.K, gs = a.group_size, groups = K / gs, nb = K / QB;
  const uint32_t* wt = reinterpret_cast<const uint32_t*>(a.w) + size_t(tile) * (K / PER) * kPackRows;
  const size_t sb0 = size_t(tile) * groups * kPackRows;
  vf acc[MT][H] = {};
  for (size_t g = 0; g < groups; ++g) {
    vf part[MT][H] = {};
    for (size_t b = g * gs / QB; b < (g + 1) * gs / QB; ++b) {
      vi lo[MT][H] = {}, hi[MT][H] = {};  // two chains of exact int32 sums
#pragma GCC unroll 8
      for (int i = 0; i < WORDS; ++i) {
        const size_t word = b * WORDS + i;
        vu q[H];
        memcpy(&q, wt + word * kPackRows, sizeof q);
        for (int m = 0; m < MT; ++m) {
          const int8_t* x = v.q + size_t(m0 + m) * K + word * PER;
          for (int h = 0; h < H; ++h) {
            if constexpr (BITS == 4) {
              lo[m][h] = dot4(lo[m][h], q[h] & 0x0F0F0F0Fu, quad(x));
              hi[m][h] = dot4(hi[m][h], (q[h] >> 4) & 0x0F0F0F0Fu, quad(x + 4));
            } else if (i % 2 == 0) {
              lo[m][h] = dot4(lo[m][h], q[h], quad(x));
            } else {
              hi[m][h] = dot4(hi[m][h], q[h], quad(x));
            }
          }
        }
      }
      for (int m = 0; m < MT; ++m) {
        const vf d = splat(v.d[size_t(m0 + m) * nb + b]);
        for (int h = 0; h < H; ++h) part[m][h] += to_float((vu)(lo[m][h] + hi[m][h])) * d;
      }
    }
    for (int h = 0; h < H; ++h) {
      const size_t at = sb0 + g * kPackRows + h * VL;
      const vf s = load_weights<S>(a.scales, at), bias = load_weights<S>(a.biases, at);
      for (int m = 0; m < MT; ++m) {
        const size_t xg = size_t(m0 + m) * groups + g;
        acc[m][h] += (part[m][h] + c * v.corr[xg]) * s;
        acc[m][h] += bias * splat(v.xsum[xg]);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    memcpy(a.y + size_t(m0 + m) * a.N + size_t(tile) * kPackRows, &acc[m], sizeof acc[m]);
}

template <int BITS, ScalarType S>
void int8_tiles(const QuantArgs& a, int t0, int t1) {
  const View v = view(a.prepared, a.M, a.K, a.K / a.group_size);
  for (int tile = t0; tile < t1; ++tile) {
    int m = 0;
    for (; m + kMaxRows <= a.M; m += kMaxRows) int8_tile<BITS, kMaxRows, S>(a, v, tile, m);
    auto body = [&](auto rows, int, int, int m_begin) {
      int8_tile<BITS, decltype(rows)::value, S>(a, v, tile, m_begin);
    };
    row_tail<kMaxRows - 1>(a.M - m, body, 0, 0, m);
  }
}

template <int BITS>
void int8_bits(const QuantArgs& a, int t0, int t1) {
  switch (a.sb_type) {
    case kFloat32: return int8_tiles<BITS, kFloat32>(a, t0, t1);
    case kFloat16: return int8_tiles<BITS, kFloat16>(a, t0, t1);
    default: return int8_tiles<BITS, kBFloat16>(a, t0, t1);
  }
}

}  // namespace
#endif  // __AVX2__

bool packed_int8(int bits) {
#if defined(__AVX512VNNI__) && VECTOR_BYTES == 64
  return bits == 4 || bits == 8;
#elif defined(__AVX2__)
  return bits == 4;  // 8-bit pair sums would saturate vpmaddubsw's 16 bits
#else
  (void)bits;
  return false;
#endif
}

size_t packed_scratch(const QuantArgs& a) {
  const size_t M = a.M, K = a.K, groups = K / a.group_size;
#if defined(__AVX2__)
  if (a.int8) return align64(M * K) + align64(M * (K / QB) * 4) + 2 * align64(M * groups * 4);
#endif
  return M * groups * sizeof(float);
}

void packed_prepare(const QuantArgs& a) {
  const size_t M = a.M, K = a.K, gs = a.group_size, groups = K / gs;
#if defined(__AVX2__)
  if (a.int8) {
    const View v = view(a.prepared, M, K, groups);
    for (size_t m = 0; m < M; ++m) {
      const float* x = a.x + m * K;
      for (size_t g = 0; g < groups; ++g) v.xsum[m * groups + g] = v.corr[m * groups + g] = 0.0f;
      for (size_t b = 0; b < K / QB; ++b) {
        const float* xb = x + b * QB;
        float amax = 0.0f, sum = 0.0f;
        for (int i = 0; i < QB; ++i) {
          amax = std::max(amax, xb[i] < 0.0f ? -xb[i] : xb[i]);
          sum += xb[i];
        }
        const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        int qsum = 0;
        for (int i = 0; i < QB; ++i) {
          const float r = xb[i] * inv;
          const int qi = int(r + (r >= 0.0f ? 0.5f : -0.5f));
          // 4-bit words hold elements [0, 8) as bytes (0, 1), (2, 3), ...: low nibbles are
          // the even elements, high nibbles the odd ones.
          const int at = a.bits == 4 ? i / 8 * 8 + (i % 2) * 4 + (i % 8) / 2 : i;
          v.q[m * K + b * QB + at] = int8_t(qi);
          qsum += qi;
        }
        v.d[m * (K / QB) + b] = d;
        const size_t g = m * groups + b * QB / gs;
        v.xsum[g] += sum;
        v.corr[g] += sum - d * float(qsum);
      }
    }
    return;
  }
#endif
  // The float path takes x as it is, and its sums per group for the biases.
  float* xsum = static_cast<float*>(a.prepared);
  for (size_t i = 0; i < M * groups; ++i) {
    float sum = 0.0f;
    for (size_t k = 0; k < gs; ++k) sum += a.x[i * gs + k];
    xsum[i] = sum;
  }
}

void packed_int8_matmul(const QuantArgs& a, int t0, int t1) {
#if defined(__AVX2__)
  if (a.bits == 4) return int8_bits<4>(a, t0, t1);
  return int8_bits<8>(a, t0, t1);
#else
  (void)a, (void)t0, (void)t1;
#endif
}

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
