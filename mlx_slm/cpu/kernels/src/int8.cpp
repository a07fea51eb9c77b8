// The int8 path, compiled once per ISA variant like kernels.cpp.
//
// 4- and 8-bit weights on x86 (AVX2 and up): x is rounded to int8 per block of 32 elements
// (a float scale each, as llama.cpp does for its q8 activations) and meets the packed weights
// in integer dot products (vpdpbusd with AVX512-VNNI, else vpmaddubsw), 32 weights per instruction instead of 8 float FMAs.
// The products use the centred weights s * (q - c), c = 2^(bits-1), and the rest,
// (b + c * s) * sum(x), uses x itself, so x's rounding meets weights of the size of w.
// Error per output: at most sum_k |s * (q_k - c)| * max|x_block| / 254, plus round-off.
#include "int8.h"

#include "variant.h"

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

bool int8_path(int bits) {
#if defined(__AVX2__)
  return bits == 4 || bits == 8;
#else
  (void)bits;
  return false;
#endif
}

#if defined(__AVX2__)
namespace {

constexpr int QB = 32;  // elements of x per int8 block

// The prepared x, carved out of the scratch buffer.
struct Int8View {
  int8_t* q;    // [M, K]; 4-bit: each block as [even elements, odd elements]
  float* d;     // [M, K / QB] block scales
  float* xsum;  // [M, groups] sums of x (meet the biases)
  float* corr;  // [M, groups] sum_b d_b * sum(q_b): 4-bit products are of uncentred q
};

inline size_t align64(size_t n) {
  return (n + 63) & ~size_t(63);
}

Int8View int8_view(void* base, int M, int K, int group_size) {
  auto* p = static_cast<uint8_t*>(base);
  const size_t groups = K / group_size;
  Int8View v;
  v.q = reinterpret_cast<int8_t*>(p);
  p += align64(size_t(M) * K);
  v.d = reinterpret_cast<float*>(p);
  p += align64(size_t(M) * (K / QB) * sizeof(float));
  v.xsum = reinterpret_cast<float*>(p);
  p += align64(size_t(M) * groups * sizeof(float));
  v.corr = reinterpret_cast<float*>(p);
  return v;
}

}  // namespace

size_t int8_scratch(int M, int K, int group_size) {
  const size_t groups = K / group_size;
  return align64(size_t(M) * K) + align64(size_t(M) * (K / QB) * sizeof(float)) +
      2 * align64(size_t(M) * groups * sizeof(float));
}

void int8_prepare(const QuantArgs& a) {
  const int M = a.M, K = a.K, groups = K / a.group_size, nb = K / QB;
  const Int8View v = int8_view(a.prepared, M, K, a.group_size);
  for (int m = 0; m < M; ++m) {
    const float* x = a.x + size_t(m) * K;
    float* xsum = v.xsum + size_t(m) * groups;
    float* corr = v.corr + size_t(m) * groups;
    for (int g = 0; g < groups; ++g) xsum[g] = corr[g] = 0.0f;
    for (int b = 0; b < nb; ++b) {
      const float* xb = x + b * QB;
      float amax = 0.0f, sum = 0.0f;
      for (int i = 0; i < QB; ++i) {
        amax = xb[i] > amax ? xb[i] : (-xb[i] > amax ? -xb[i] : amax);
        sum += xb[i];
      }
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int8_t* q = v.q + size_t(m) * K + b * QB;
      int qsum = 0;
      for (int i = 0; i < QB; ++i) {
        const float r = xb[i] * inv;
        const int qi = int(r + (r >= 0.0f ? 0.5f : -0.5f));
        q[a.bits == 4 ? (i % 2) * (QB / 2) + i / 2 : i] = int8_t(qi);
        qsum += qi;
      }
      const float d = amax / 127.0f;
      v.d[size_t(m) * nb + b] = d;
      const int g = b * QB / a.group_size;
      xsum[g] += sum;
      corr[g] += d * float(qsum);
    }
  }
}

namespace {

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// vpdpbusd (AVX512-VNNI) sums unsigned-by-signed byte products into int32 lanes without
// saturating, so it takes every width's weights as unsigned q; vpmaddubsw needs 8-bit ones
// centred (signed).
#if defined(__AVX512VNNI__)
constexpr bool kVnni = true;
#else
constexpr bool kVnni = false;
#endif
// Whether the dot products meet q itself; the centring, c * sum(x_q), is then subtracted
// per group (Int8View::corr).
template <int BITS>
constexpr bool kUncentred = BITS == 4 || kVnni;

// 32 weights as 32 bytes in the order of x's block: 4-bit unsigned nibbles
// [even elements, odd elements]; 8-bit q (VNNI) or q - 128 as signed bytes.
template <int BITS>
inline __m256i load_w32(const uint8_t* p) {
  if constexpr (BITS == 4) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i both =
        _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
  } else {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return kVnni ? raw : _mm256_xor_si256(raw, _mm256_set1_epi8(char(0x80)));
  }
}

// Eight int32 partial sums of w . xq. vpmaddubsw multiplies unsigned by signed bytes and
// saturates pair sums at 16 bits: 4-bit is 15 * 127 * 2 at most; 8-bit runs as
// |w - 128| * (xq * sign(w - 128)), at most 128 * 127 * 2.
template <int BITS>
inline __m256i dot32(__m256i w, __m256i xq) {
#if defined(__AVX512VNNI__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xq);
#else
  __m256i p16;
  if constexpr (BITS == 4)
    p16 = _mm256_maddubs_epi16(w, xq);
  else
    p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xq, w));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
#endif
}

// NR weight rows from n against MT rows of x from m0.
template <int BITS, int MT, int NR>
void int8_rows(const QuantArgs& a, const Int8View& v, int n, int m0) {
  const size_t K = a.K, gs = a.group_size, groups = K / gs, nb = K / QB;
  const size_t row_bytes = K * BITS / 8;
  __m256 acc[NR][MT];
  float extra[NR][MT];
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m) {
      acc[r][m] = _mm256_setzero_ps();
      extra[r][m] = 0.0f;
    }
  for (size_t g = 0; g < groups; ++g) {
    __m256 accg[NR][MT];
    for (int r = 0; r < NR; ++r)
      for (int m = 0; m < MT; ++m) accg[r][m] = _mm256_setzero_ps();
    for (size_t kb = g * gs / QB; kb < (g + 1) * gs / QB; ++kb) {
      __m256i w[NR];
      for (int r = 0; r < NR; ++r)
        w[r] = load_w32<BITS>(a.w + (n + r) * row_bytes + kb * QB * BITS / 8);
      for (int m = 0; m < MT; ++m) {
        const __m256i xq =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v.q + (m0 + m) * K + kb * QB));
        const __m256 d = _mm256_broadcast_ss(v.d + (m0 + m) * nb + kb);
        for (int r = 0; r < NR; ++r)
          accg[r][m] =
              _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32<BITS>(w[r], xq)), d, accg[r][m]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      const size_t gi = size_t(n + r) * groups + g;
      const float s = scalar_at(a.scales, gi, a.sb_type);
      const float b = scalar_at(a.biases, gi, a.sb_type);
      for (int m = 0; m < MT; ++m) {
        acc[r][m] = _mm256_fmadd_ps(accg[r][m], _mm256_set1_ps(s), acc[r][m]);
        const size_t xg = (m0 + m) * groups + g;
        constexpr float c = 1 << (BITS - 1);
        extra[r][m] += (b + c * s) * v.xsum[xg] - (kUncentred<BITS> ? c * s * v.corr[xg] : 0.0f);
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m)
      a.y[size_t(m0 + m) * a.N + n + r] = hsum8(acc[r][m]) + extra[r][m];
}

template <int BITS, int MT, int NR>
void int8_columns(const QuantArgs& a, const Int8View& v, int n0, int n1, int m0) {
  int n = n0;
  for (; n + NR <= n1; n += NR) int8_rows<BITS, MT, NR>(a, v, n, m0);
  for (; n < n1; ++n) int8_rows<BITS, MT, 1>(a, v, n, m0);
}

// Rows of x four at a time; fewer rows take more weight rows at once (shared x loads).
template <int BITS>
void int8_matmul_bits(const QuantArgs& a, int n0, int n1) {
  const Int8View v = int8_view(a.prepared, a.M, a.K, a.group_size);
  for_tiles<4>(a.M, n0, n1, [&](auto rows, int nb, int ne, int m) {
    constexpr int MT = decltype(rows)::value;
    int8_columns<BITS, MT, MT == 1 ? 4 : (MT == 2 ? 2 : 1)>(a, v, nb, ne, m);
  });
}

}  // namespace

void int8_quant_matmul(const QuantArgs& a, int n0, int n1) {
  if (a.bits == 4) return int8_matmul_bits<4>(a, n0, n1);
  int8_matmul_bits<8>(a, n0, n1);
}

#endif  // __AVX2__

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
