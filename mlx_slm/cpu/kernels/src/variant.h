// What the kernels of one ISA variant share: vector types and loads, scalar reads, and the
// tiling of a product into column tiles and row chunks. Included only by the translation
// units compiled once per ISA (kernels.cpp, int8.cpp), inside the variant's own namespace,
// so code built with wide-ISA flags cannot be merged into (and run from) another variant.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef VECTOR_BYTES
#define VECTOR_BYTES 16
#endif
#ifndef KERNEL_NAME
#define KERNEL_NAME generic
#endif

namespace mlx_slm_kernels {
namespace KERNEL_NAME {

constexpr int VL = VECTOR_BYTES / 4;  // floats per vector
typedef float vf __attribute__((vector_size(VECTOR_BYTES)));
typedef uint32_t vu __attribute__((vector_size(VECTOR_BYTES)));
typedef int32_t vi __attribute__((vector_size(VECTOR_BYTES)));

// Independent accumulator chains per output row, enough to hide FMA latency. The same for
// every row count: a row's sums then run in one order however many rows share a tile, so a
// multi-row product is bit-identical, row by row, to one-row products (batch invariance).
constexpr int kChains = 4;
// Rows of x per tile: kChains accumulators per row must fit the vector registers (16 on
// AVX2 and SSE, 32 on AVX-512).
constexpr int kMaxRows = VECTOR_BYTES == 64 ? 4 : 2;
// Output columns per tile, so that a tile's weights stay in cache while every chunk of rows
// passes over them.
constexpr int kColumnTile = 16;

inline vf load_f32(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}

// s in every lane. s - 0 (not 0 + s, which would turn -0 into +0) is the identity, so the
// compiler emits one broadcast, from memory where s comes from memory.
inline vf splat(float s) {
  return s - vf{};
}

// The sum of a vector's lanes, by halving (a short dependency chain, in a fixed order).
inline float hsum(vf v) {
  float t[VL];
  memcpy(t, &v, sizeof v);
  for (int w = VL / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) t[i] += t[i + w];
  return t[0];
}

// The sum of a row's accumulator chains, in a fixed order.
inline float sum_chains(const vf (&acc)[kChains]) {
  vf t = acc[0];
  for (int c = 1; c < kChains; ++c) t += acc[c];
  return hsum(t);
}

inline float half_to_float(uint16_t h) {
  // Exponent rebias: exact for finite values, subnormals included.
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t u = uint32_t(h & 0x7fffu) << 13;
  float f;
  memcpy(&f, &u, 4);
  f *= 0x1p112f;
  memcpy(&u, &f, 4);
  u |= sign;
  memcpy(&f, &u, 4);
  return f;
}

inline float scalar_at(const void* p, size_t i, ScalarType t) {
  switch (t) {
    case kFloat32: return static_cast<const float*>(p)[i];
    case kBFloat16: {
      const uint32_t u = uint32_t(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      memcpy(&f, &u, 4);
      return f;
    }
    default: return half_to_float(static_cast<const uint16_t*>(p)[i]);
  }
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

// float16 bits -> float32 by exponent rebias (as half_to_float, a vector at a time).
inline vu half_bits_to_float_bits(vu u) {
  const vu sign = (u & 0x8000u) << 16;
  const vf mag = (vf)((u & 0x7fffu) << 13) * 0x1p112f;
  return (vu)mag | sign;
}

template <ScalarType T>
inline vf load_weights(const void* base, size_t i) {
  if constexpr (T == kFloat32) {
    return load_f32(static_cast<const float*>(base) + i);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + i;
#if defined(__AVX512F__) && VECTOR_BYTES == 64
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (T == kFloat16) return (vf)_mm512_cvtph_ps(raw);
    const vu u = (vu)_mm512_cvtepu16_epi32(raw);
#elif defined(__AVX2__) && VECTOR_BYTES == 32
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (T == kFloat16) return (vf)_mm256_cvtph_ps(raw);
    const vu u = (vu)_mm256_cvtepu16_epi32(raw);
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

// A compile-time row count, passed to tile bodies.
template <int MT>
using Rows = std::integral_constant<int, MT>;

template <int MT, typename Body>
inline void row_tail(int rows, Body& body, int nb, int ne, int m) {
  if constexpr (MT > 0) {
    if (rows == MT) return body(Rows<MT>{}, nb, ne, m);
    row_tail<MT - 1>(rows, body, nb, ne, m);
  }
}

// Columns [n0, n1) of an M-row product in column tiles; in each, rows in chunks of
// MAX_ROWS and one tail chunk: body(Rows<MT>{}, n_begin, n_end, m_begin).
template <int MAX_ROWS, typename Body>
inline void for_tiles(int M, int n0, int n1, Body&& body) {
  for (int nb = n0; nb < n1; nb += kColumnTile) {
    const int ne = std::min(nb + kColumnTile, n1);
    int m = 0;
    for (; m + MAX_ROWS <= M; m += MAX_ROWS) body(Rows<MAX_ROWS>{}, nb, ne, m);
    row_tail<MAX_ROWS - 1>(M - m, body, nb, ne, m);
  }
}

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
