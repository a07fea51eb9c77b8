// The hot loops, written once with GCC/Clang vector extensions and compiled once per ISA
// (CMakeLists.txt: generic, AVX2+FMA+F16C, AVX-512). KERNEL_TABLE names this variant's
// table and VECTOR_BYTES its SIMD width. Everything else has internal linkage, so code built
// with wide-ISA flags cannot be merged into (and run from) another variant.
#include <cstring>

#include "kernels.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef VECTOR_BYTES
#define VECTOR_BYTES 16
#endif
#ifndef KERNEL_TABLE
#define KERNEL_TABLE kernels_generic
#endif
#define STR2(x) #x
#define STR(x) STR2(x)

namespace mlx_slm_kernels {
namespace {

constexpr int VL = VECTOR_BYTES / 4;  // floats per vector
typedef float vf __attribute__((vector_size(VECTOR_BYTES)));
typedef uint32_t vu __attribute__((vector_size(VECTOR_BYTES)));
typedef int32_t vi __attribute__((vector_size(VECTOR_BYTES)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));

inline vf load_f32(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}

inline vf splat(float s) {
  return vf{} + s;
}

// VL bytes -> VL uint32 lanes. GCC scalarizes __builtin_convertvector from narrow integer
// vectors on x86, hence the intrinsics.
inline vu widen_bytes(const uint8_t* p) {
#if defined(__AVX512F__) && VECTOR_BYTES == 64
  return (vu)_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#elif defined(__AVX2__) && VECTOR_BYTES == 32
  return (vu)_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  vu u;
  for (int i = 0; i < VL; ++i) u[i] = p[i];
  return u;
#endif
}

inline vf to_float(vu u) {
  return __builtin_convertvector((vi)u, vf);
}

inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < VL; ++i) s += v[i];
  return s;
}

// float16 bits -> float32 by exponent rebias (exact for finite values, subnormals included;
// weights and scales are finite).
inline vu half_bits_to_float_bits(vu u) {
  const vu sign = (u & 0x8000u) << 16;
  const vf mag = (vf)((u & 0x7fffu) << 13) * 0x1p112f;
  return (vu)mag | sign;
}

inline float scalar_at(const void* p, size_t i, ScalarType t) {
  uint32_t u;
  float f;
  switch (t) {
    case kFloat32:
      return static_cast<const float*>(p)[i];
    case kBFloat16:
      u = uint32_t(static_cast<const uint16_t*>(p)[i]) << 16;
      break;
    default: {
      const uint32_t h = static_cast<const uint16_t*>(p)[i];
      const uint32_t sign = (h & 0x8000u) << 16;
      u = (h & 0x7fffu) << 13;
      memcpy(&f, &u, 4);
      f *= 0x1p112f;
      memcpy(&u, &f, 4);
      u |= sign;
    }
  }
  memcpy(&f, &u, 4);
  return f;
}

template <ScalarType T>
inline vf load_weights(const void* base, size_t i) {
  if constexpr (T == kFloat32) {
    return load_f32(static_cast<const float*>(base) + i);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + i;
#if defined(__AVX512F__) && VECTOR_BYTES == 64
    const vu u = (vu)_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    if constexpr (T == kFloat16) return (vf)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#elif defined(__AVX2__) && VECTOR_BYTES == 32
    const vu u = (vu)_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    if constexpr (T == kFloat16) return (vf)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
    vu u;
    for (int j = 0; j < VL; ++j) u[j] = p[j];
#endif
    if constexpr (T == kBFloat16) {
      return (vf)(u << 16);
    } else {
      return (vf)half_bits_to_float_bits(u);
    }
  }
}

// Independent accumulator chains per output row: enough to hide FMA latency without
// running out of the 16 AVX2 vector registers.
template <int MT>
constexpr int chains() {
  return MT <= 2 ? 4 : (MT <= 4 ? 2 : 1);
}

// ---------------------------------------------------------------- quantized
// A block is VL packed bytes = VL * (8 / bits) elements. prepare_x permutes each block of x
// so that shift t of those bytes meets x[t * VL .. t * VL + VL) (no in-register shuffles).

void permute_x(const float* x, float* xp, int M, int K, int bits) {
  const int per = 8 / bits, blk = VL * per;
  for (size_t r = 0; r < size_t(M); ++r) {
    const float* src = x + r * K;
    float* dst = xp + r * K;
    for (int b0 = 0; b0 < K; b0 += blk)
      for (int t = 0; t < per; ++t)
        for (int j = 0; j < VL; ++j) dst[b0 + t * VL + j] = src[b0 + j * per + t];
  }
}

template <int BITS, int MT, int C>
inline void quant_block_fma(
    vf (&acc)[MT][C], const uint8_t* wq, const float* x, size_t K, vf s, vf b, int c0) {
  constexpr int PER = 8 / BITS;
  const vu q = widen_bytes(wq);
#pragma GCC unroll 8
  for (int t = 0; t < PER; ++t) {
    vu qt = q;
    if constexpr (BITS < 8) qt = (q >> (t * BITS)) & ((1u << BITS) - 1);
    const vf w = to_float(qt) * s + b;
    const int c = (c0 + t) % C;
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) acc[m][c] += w * load_f32(x + m * K + t * VL);
  }
}

template <int BITS, int MT>
void quant_rows(const QuantArgs& a, int n0, int n1, int m0) {
  constexpr int PER = 8 / BITS, BLK = VL * PER, C = chains<MT>();
  // Blocks per unrolled step: spread one step's vectors over all C chains.
  constexpr int U = C / PER > 1 ? C / PER : 1;
  const size_t K = a.K, gs = a.group_size, groups = K / gs;
  const size_t row_bytes = K * BITS / 8;
  const float* x = a.x + size_t(m0) * K;
  const bool unroll = (gs / BLK) % U == 0;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* wr = a.w + size_t(n) * row_bytes;
    vf acc[MT][C] = {};
    for (size_t g = 0; g < groups; ++g) {
      const size_t gi = size_t(n) * groups + g;
      const vf s = splat(scalar_at(a.scales, gi, a.sb_type));
      const vf b = splat(scalar_at(a.biases, gi, a.sb_type));
      const size_t k1 = (g + 1) * gs;
      size_t k = g * gs;
      if (unroll) {
        for (; k < k1; k += U * BLK)
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u)
            quant_block_fma<BITS, MT, C>(
                acc, wr + (k + u * BLK) / PER, x + k + u * BLK, K, s, b, u * PER);
      } else {
        for (; k < k1; k += BLK)
          quant_block_fma<BITS, MT, C>(acc, wr + k / PER, x + k, K, s, b, 0);
      }
    }
    for (int m = 0; m < MT; ++m) {
      vf t = acc[m][0];
      for (int c = 1; c < C; ++c) t += acc[m][c];
      a.y[size_t(m0 + m) * a.N + n] = hsum(t);
    }
  }
}

// Output columns in tiles, so that a tile's weights stay in cache while every chunk of
// rows passes over them.
constexpr int kColumnTile = 16;

template <int BITS>
void quant_matmul_bits(const QuantArgs& a, int n0, int n1) {
  for (int nb = n0; nb < n1; nb += kColumnTile) {
    const int ne = nb + kColumnTile < n1 ? nb + kColumnTile : n1;
    int m = 0;
    for (; m + 8 <= a.M; m += 8) quant_rows<BITS, 8>(a, nb, ne, m);
    switch (a.M - m) {
      case 1: quant_rows<BITS, 1>(a, nb, ne, m); break;
      case 2: quant_rows<BITS, 2>(a, nb, ne, m); break;
      case 3: quant_rows<BITS, 3>(a, nb, ne, m); break;
      case 4: quant_rows<BITS, 4>(a, nb, ne, m); break;
      case 5: quant_rows<BITS, 5>(a, nb, ne, m); break;
      case 6: quant_rows<BITS, 6>(a, nb, ne, m); break;
      case 7: quant_rows<BITS, 7>(a, nb, ne, m); break;
      default: break;
    }
  }
}

void float_quant_matmul(const QuantArgs& a, int n0, int n1) {
  QuantArgs p = a;
  p.x = static_cast<const float*>(a.prepared);
  switch (a.bits) {
    case 2: return quant_matmul_bits<2>(p, n0, n1);
    case 4: return quant_matmul_bits<4>(p, n0, n1);
    default: return quant_matmul_bits<8>(p, n0, n1);
  }
}

#include "kernels_int8.inc"

bool quant_supported(int group_size, int bits) {
  if (bits != 2 && bits != 4 && bits != 8) return false;
  if (group_size != 32 && group_size != 64 && group_size != 128) return false;
  return group_size % (VL * (8 / bits)) == 0;
}

#if defined(__AVX2__)
size_t quant_scratch(const QuantArgs& a) {
  if (a.int8) return int8_scratch(a.M, a.K, a.group_size);
  return size_t(a.M) * a.K * sizeof(float);
}

void prepare_quant(const QuantArgs& a) {
  if (a.int8) return int8_prepare(a);
  permute_x(a.x, static_cast<float*>(a.prepared), a.M, a.K, a.bits);
}

void quant_matmul(const QuantArgs& a, int n0, int n1) {
  if (a.int8) return int8_quant_matmul(a, n0, n1);
  float_quant_matmul(a, n0, n1);
}
#else
bool int8_path(int) {
  return false;
}

size_t quant_scratch(const QuantArgs& a) {
  return size_t(a.M) * a.K * sizeof(float);
}

void prepare_quant(const QuantArgs& a) {
  permute_x(a.x, static_cast<float*>(a.prepared), a.M, a.K, a.bits);
}

void quant_matmul(const QuantArgs& a, int n0, int n1) {
  float_quant_matmul(a, n0, n1);
}
#endif

// ---------------------------------------------------------------- dense
template <ScalarType T, int MT>
void dense_rows(const DenseArgs& a, int n0, int n1, int m0) {
  constexpr int C = chains<MT>();
  const size_t K = a.K;
  const size_t kv = K / VL * VL, kc = K / (VL * C) * (VL * C);
  const float* x = a.x + size_t(m0) * K;
  for (int n = n0; n < n1; ++n) {
    const size_t row = size_t(n) * K;
    vf acc[MT][C] = {};
    size_t k = 0;
    for (; k < kc; k += VL * C)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const vf w = load_weights<T>(a.w, row + k + c * VL);
#pragma GCC unroll 8
        for (int m = 0; m < MT; ++m) acc[m][c] += w * load_f32(x + m * K + k + c * VL);
      }
    for (; k < kv; k += VL) {
      const vf w = load_weights<T>(a.w, row + k);
      for (int m = 0; m < MT; ++m) acc[m][0] += w * load_f32(x + m * K + k);
    }
    for (int m = 0; m < MT; ++m) {
      vf t = acc[m][0];
      for (int c = 1; c < C; ++c) t += acc[m][c];
      float s = hsum(t);
      for (size_t j = kv; j < K; ++j) s += scalar_at(a.w, row + j, T) * x[m * K + j];
      a.y[size_t(m0 + m) * a.N + n] = s;
    }
  }
}

template <ScalarType T>
void dense_matmul_type(const DenseArgs& a, int n0, int n1) {
  for (int nb = n0; nb < n1; nb += kColumnTile) {
    const int ne = nb + kColumnTile < n1 ? nb + kColumnTile : n1;
    int m = 0;
    for (; m + 8 <= a.M; m += 8) dense_rows<T, 8>(a, nb, ne, m);
    switch (a.M - m) {
      case 1: dense_rows<T, 1>(a, nb, ne, m); break;
      case 2: dense_rows<T, 2>(a, nb, ne, m); break;
      case 3: dense_rows<T, 3>(a, nb, ne, m); break;
      case 4: dense_rows<T, 4>(a, nb, ne, m); break;
      case 5: dense_rows<T, 5>(a, nb, ne, m); break;
      case 6: dense_rows<T, 6>(a, nb, ne, m); break;
      case 7: dense_rows<T, 7>(a, nb, ne, m); break;
      default: break;
    }
  }
}

void dense_matmul(const DenseArgs& a, int n0, int n1) {
  switch (a.w_type) {
    case kFloat32: return dense_matmul_type<kFloat32>(a, n0, n1);
    case kFloat16: return dense_matmul_type<kFloat16>(a, n0, n1);
    default: return dense_matmul_type<kBFloat16>(a, n0, n1);
  }
}

constexpr KernelTable kTable = {
    STR(KERNEL_NAME), VL, quant_supported, int8_path, quant_scratch, prepare_quant,
    quant_matmul, dense_matmul};

}  // namespace

const KernelTable& KERNEL_TABLE() {
  return kTable;
}

}  // namespace mlx_slm_kernels
