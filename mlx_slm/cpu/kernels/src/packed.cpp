// Quantized products from packed weights (kPackRows in kernels.h), compiled once per ISA.
//
// A tile's 16 output rows sit side by side: one load brings the same uint32 word of 16
// rows, element t of that word for all 16 rows is one vector of codes, and one FMA with x's
// element broadcast adds it to 16 running sums. No horizontal sums, no per-row epilogue:
// each group ends with one multiply by the 16 rows' scales (a vector load) and one FMA of
// the 16 biases with the group's sum of x. Each byte of the weights is read once per
// product however many rows x has; rows of x beyond one register tile re-read the tile
// from L1.
//
// Every row of x runs the same operations in the same order whatever the row count, so a
// multi-row product is bit-identical, row by row, to one-row products (batch invariance).
#include "packed.h"

#include "variant.h"

namespace mlx_slm_kernels {
namespace KERNEL_NAME {
namespace {

constexpr int H = kPackRows / VL;  // vectors per 16 rows
// Independent FMA chains per row of x and vector: four in all, to hide FMA latency.
constexpr int C = H >= 4 ? 1 : 4 / H;
// Rows of x per register tile: MT * (C + 1) * H accumulators must fit the registers.
constexpr int kPackedMaxRows = VECTOR_BYTES == 64 ? 4 : (VECTOR_BYTES == 32 ? 2 : 1);

// Element t of each lane's word as a float; centred (minus 2^(BITS-1)) where that is free:
// AVX-512's vpermps looks 2- and 4-bit codes up in a 16-entry table (it reads only the low
// 4 bits of each index), doing the mask, the centring and the conversion at once.
template <int BITS>
constexpr float kCentre =
#if defined(__AVX512F__) && VECTOR_BYTES == 64
    BITS <= 4 ? float(1 << (BITS - 1)) : 0.0f;
#else
    0.0f;
#endif

// Forced inline: the chains must stay in registers through the per-element recursion.
#define ALWAYS_INLINE inline __attribute__((always_inline))

template <int BITS, int T>
ALWAYS_INLINE vf codes(vu q) {
  constexpr uint32_t kMask = (1u << BITS) - 1;
#if defined(__AVX512F__) && VECTOR_BYTES == 64
  if constexpr (BITS <= 4) {
    vf table;
    for (int i = 0; i < 16; ++i) table[i] = float(i & kMask) - kCentre<BITS>;
    return (vf)_mm512_permutexvar_ps((__m512i)(q >> (T * BITS)), (__m512)table);
  }
#endif
  if constexpr (T * BITS + BITS == 32) return to_float(q >> (T * BITS));
  return to_float((q >> (T * BITS)) & kMask);
}

// Element t .. PER-1 of one word of 16 rows against MT rows of x, into the chains.
template <int BITS, int MT, int T = 0>
ALWAYS_INLINE void word_fma(vf (&part)[MT][C][H], const vu (&q)[H], const float* x, size_t K, int k) {
  if constexpr (T < 32 / BITS) {
    // A word holds a multiple of C elements, so element T's chain is known at compile time
    // (a run-time index would keep the chains in memory).
    constexpr int c = T % C;
    vf w[H];
    for (int h = 0; h < H; ++h) w[h] = codes<BITS, T>(q[h]);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const vf xb = splat(x[m * K + k + T]);
      for (int h = 0; h < H; ++h) part[m][c][h] += w[h] * xb;
    }
    word_fma<BITS, MT, T + 1>(part, q, x, K, k);
  }
}

template <int BITS, int MT, ScalarType S>
void packed_tile(const QuantArgs& a, const float* xsum, int tile, int m0) {
  constexpr int PER = 32 / BITS;
  const size_t K = a.K, gs = a.group_size, groups = K / gs, words = K / PER;
  const size_t group_words = gs / PER;
  const uint32_t* wt = reinterpret_cast<const uint32_t*>(a.w) + size_t(tile) * words * kPackRows;
  const size_t sb0 = size_t(tile) * groups * kPackRows;
  const float* x = a.x + size_t(m0) * K;
  xsum += size_t(m0) * groups;
  vf acc[MT][H] = {};
  for (size_t g = 0; g < groups; ++g) {
    vf part[MT][C][H] = {};
    for (size_t i = 0; i < group_words; ++i) {
      const size_t word = g * group_words + i;
      vu q[H];
      memcpy(&q, wt + word * kPackRows, sizeof q);
      word_fma<BITS, MT>(part, q, x, K, int(word * PER));
    }
    for (int h = 0; h < H; ++h) {
      const size_t at = sb0 + g * kPackRows + h * VL;
      const vf s = load_weights<S>(a.scales, at);
      const vf b = load_weights<S>(a.biases, at) + kCentre<BITS> * s;
      for (int m = 0; m < MT; ++m) {
        vf t = part[m][0][h];
        for (int c = 1; c < C; ++c) t += part[m][c][h];
        acc[m][h] += t * s;
        acc[m][h] += b * splat(xsum[m * groups + g]);
      }
    }
  }
  for (int m = 0; m < MT; ++m)
    memcpy(a.y + size_t(m0 + m) * a.N + size_t(tile) * kPackRows, &acc[m], sizeof acc[m]);
}

template <int BITS, ScalarType S>
void packed_tiles(const QuantArgs& a, int t0, int t1) {
  const float* xsum = static_cast<const float*>(a.prepared);
  for (int tile = t0; tile < t1; ++tile) {
    int m = 0;
    for (; m + kPackedMaxRows <= a.M; m += kPackedMaxRows)
      packed_tile<BITS, kPackedMaxRows, S>(a, xsum, tile, m);
    auto body = [&](auto rows, int, int, int m_begin) {
      packed_tile<BITS, decltype(rows)::value, S>(a, xsum, tile, m_begin);
    };
    row_tail<kPackedMaxRows - 1>(a.M - m, body, 0, 0, m);
  }
}

template <int BITS>
void packed_bits(const QuantArgs& a, int t0, int t1) {
  switch (a.sb_type) {
    case kFloat32: return packed_tiles<BITS, kFloat32>(a, t0, t1);
    case kFloat16: return packed_tiles<BITS, kFloat16>(a, t0, t1);
    default: return packed_tiles<BITS, kBFloat16>(a, t0, t1);
  }
}

// Dense weights packed the same way: element k of 16 rows is one vector (kPackRows).
template <ScalarType T, int MT>
void packed_dense_tile(const DenseArgs& a, int tile, int m0) {
  const size_t K = a.K, base = size_t(tile) * K * kPackRows;
  const float* x = a.x + size_t(m0) * K;
  vf acc[MT][C][H] = {};
  auto step = [&](size_t k, auto chain) {
    constexpr int c = decltype(chain)::value;
    vf w[H];
    for (int h = 0; h < H; ++h) w[h] = load_weights<T>(a.w, base + k * kPackRows + h * VL);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const vf xb = splat(x[m * K + k]);
      for (int h = 0; h < H; ++h) acc[m][c][h] += w[h] * xb;
    }
  };
  size_t k = 0;
  for (; k + C <= K; k += C) {
    step(k, std::integral_constant<int, 0>{});
    if constexpr (C > 1) step(k + 1, std::integral_constant<int, 1 % C>{});
    if constexpr (C > 2) step(k + 2, std::integral_constant<int, 2 % C>{});
    if constexpr (C > 3) step(k + 3, std::integral_constant<int, 3 % C>{});
  }
  for (; k < K; ++k) step(k, std::integral_constant<int, 0>{});  // K's tail: chain 0
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < H; ++h) {
      vf t = acc[m][0][h];
      for (int c = 1; c < C; ++c) t += acc[m][c][h];
      memcpy(a.y + size_t(m0 + m) * a.N + size_t(tile) * kPackRows + h * VL, &t, sizeof t);
    }
}

// bfloat16 tiles hold pairs: a lane's 32 bits are a row's elements (k, k + 1), so one load
// gives both as floats by a shift and a mask (no widening loads).
template <int MT>
void packed_pairs_tile(const DenseArgs& a, int tile, int m0) {
  const size_t K = a.K, base = size_t(tile) * K * kPackRows;
  const uint16_t* w = static_cast<const uint16_t*>(a.w) + base;
  const float* x = a.x + size_t(m0) * K;
  vf acc[MT][C][H] = {};
  auto step = [&](size_t k, auto chain) {
    constexpr int c = decltype(chain)::value;
    vu pair[H];
    memcpy(&pair, w + k * kPackRows, sizeof pair);
    for (int h = 0; h < H; ++h) {
      const vf even = (vf)(pair[h] << 16), odd = (vf)(pair[h] & 0xFFFF0000u);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        acc[m][c][h] += even * splat(x[m * K + k]);
        acc[m][c][h] += odd * splat(x[m * K + k + 1]);
      }
    }
  };
  size_t k = 0;
  for (; k + 2 * C <= K; k += 2 * C) {
    step(k, std::integral_constant<int, 0>{});
    if constexpr (C > 1) step(k + 2, std::integral_constant<int, 1 % C>{});
    if constexpr (C > 2) step(k + 4, std::integral_constant<int, 2 % C>{});
    if constexpr (C > 3) step(k + 6, std::integral_constant<int, 3 % C>{});
  }
  for (; k < K; k += 2) step(k, std::integral_constant<int, 0>{});
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < H; ++h) {
      vf t = acc[m][0][h];
      for (int c = 1; c < C; ++c) t += acc[m][c][h];
      memcpy(a.y + size_t(m0 + m) * a.N + size_t(tile) * kPackRows + h * VL, &t, sizeof t);
    }
}

#if defined(__AVX512VNNI__) && VECTOR_BYTES == 64
// With AVX512-BF16 (checked at run time: this variant's CPUs may lack it), vdpbf16ps
// multiplies a lane's pair by x's pair and adds both, 32 products an instruction. Exact
// when x is bfloat16 (the products of two bfloat16 values are exact in float32).
template <int MT>
__attribute__((target("avx512bf16"))) void packed_bf16_dot_tile(const DenseArgs& a, int tile,
                                                                int m0) {
  const size_t K = a.K, base = size_t(tile) * K * kPackRows;
  const uint16_t* w = static_cast<const uint16_t*>(a.w) + base;
  __m512 acc[MT][C] = {};
  const uint32_t* xp = a.x_pairs + size_t(m0) * (K / 2);
  size_t k = 0;
  for (; k + 2 * C <= K; k += 2 * C) {
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) {
      const size_t kc = k + 2 * c;
      const __m512bh pair = (__m512bh)_mm512_loadu_si512(w + kc * kPackRows);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m)
        acc[m][c] = _mm512_dpbf16_ps(
            acc[m][c], pair, (__m512bh)_mm512_set1_epi32(int(xp[m * (K / 2) + kc / 2])));
    }
  }
  for (; k < K; k += 2) {
    const __m512bh pair = (__m512bh)_mm512_loadu_si512(w + k * kPackRows);
    for (int m = 0; m < MT; ++m)
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], pair,
                                   (__m512bh)_mm512_set1_epi32(int(xp[m * (K / 2) + k / 2])));
  }
  for (int m = 0; m < MT; ++m) {
    __m512 t = acc[m][0];
    for (int c = 1; c < C; ++c) t = _mm512_add_ps(t, acc[m][c]);
    _mm512_storeu_ps(a.y + size_t(m0 + m) * a.N + size_t(tile) * kPackRows, t);
  }
}

bool cpu_has_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}
#endif

template <ScalarType T>
void packed_dense_type(const DenseArgs& a, int t0, int t1) {
  for (int tile = t0; tile < t1; ++tile) {
    int m = 0;
    auto body = [&](auto rows, int, int, int m_begin) {
      constexpr int MT = decltype(rows)::value;
      if constexpr (T == kBFloat16) {
#if defined(__AVX512VNNI__) && VECTOR_BYTES == 64
        if (a.x_pairs && cpu_has_bf16()) return packed_bf16_dot_tile<MT>(a, tile, m_begin);
#endif
        return packed_pairs_tile<MT>(a, tile, m_begin);
      } else {
        return packed_dense_tile<T, MT>(a, tile, m_begin);
      }
    };
    for (; m + kPackedMaxRows <= a.M; m += kPackedMaxRows)
      body(Rows<kPackedMaxRows>{}, 0, 0, m);
    row_tail<kPackedMaxRows - 1>(a.M - m, body, 0, 0, m);
  }
}

}  // namespace

void packed_dense(const DenseArgs& a, int t0, int t1) {
  switch (a.w_type) {
    case kFloat32: return packed_dense_type<kFloat32>(a, t0, t1);
    case kFloat16: return packed_dense_type<kFloat16>(a, t0, t1);
    default: return packed_dense_type<kBFloat16>(a, t0, t1);
  }
}

void packed_matmul(const QuantArgs& a, int t0, int t1) {
  if (a.int8) return packed_int8_matmul(a, t0, t1);
  switch (a.bits) {
    case 2: return packed_bits<2>(a, t0, t1);
    case 4: return packed_bits<4>(a, t0, t1);
    default: return packed_bits<8>(a, t0, t1);
  }
}

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
