// The kernel interface shared by the ISA variants (kernels.cpp and int8.cpp, compiled once
// per ISA) and the MLX primitives (ops.cpp). Plain C types only: this header is included by translation
// units built with AVX2/AVX-512 flags, whose inline code must never leak to other CPUs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mlx_slm_kernels {

// Element types of scales, biases and half-precision weights.
enum ScalarType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// y[M, N] = x[M, K] @ dequant(w)[N, K].T, MLX's affine format: element k of row n is
// q * scale + bias, q the `bits`-bit unsigned integer packed little-endian in uint32 words,
// scale and bias per `group_size` consecutive elements of a row.
struct QuantArgs {
  const float* x;        // [M, K] contiguous float32
  void* prepared;        // x in this variant's form (prepare_quant), quant_scratch bytes
  const uint8_t* w;      // [N, K * bits / 8] bytes, row contiguous
  const void* scales;    // [N, K / group_size], row contiguous
  const void* biases;    // [N, K / group_size], row contiguous
  ScalarType sb_type;
  float* y;              // [M, N] float32
  int M, N, K, group_size, bits;
  bool int8;             // the int8 path (see KernelTable::has_int8)
};

// Weights packed for streaming (kernels.pack_quantized, kernels.pack_dense): tiles of
// kPackRows output rows, each tile stored column-major: a quantized tile's uint32 words as
// [word][row] and its scales and biases as [group][row], a dense tile as [k][row]. The same
// bytes as MLX's layout, reordered within each tile. A bfloat16 tile keeps pairs of
// elements together, [k / 2][row][2]: one 32-bit lane holds a row's (k, k + 1).
constexpr int kPackRows = 16;

// y[M, N] = x[M, K] @ w[N, K].T for float32, float16 or bfloat16 weights.
struct DenseArgs {
  const float* x;        // [M, K] contiguous float32
  const void* w;         // [N, K] row contiguous
  ScalarType w_type;
  float* y;              // [M, N] float32
  int M, N, K;
  // x as bfloat16 pairs, [M, K / 2] (element k low, k + 1 high), where x is bfloat16 and
  // the weights are packed bfloat16; else null. vdpbf16ps is exact on these.
  const uint32_t* x_pairs;
};

// Softmax attention of query rows over keys/values, float32 throughout. Query row
// (b, h, l) meets kv head h / (n_q / n_kv) and keys 0 .. S - L + l when causal (all S keys
// otherwise), less those its mask hides, in order: exactly what decoding that position
// alone computes. So a block of positions (speculative verification), or a batch whose
// padding is masked, is bit-identical to decoding each row alone.
struct AttentionArgs {
  const float* q;          // [B, n_q, L, hd] contiguous, pre-scaled
  const float* k;          // element (b, h, s, d) at b * kv_strides[0] + h * [1] + s * [2] + d
  const float* v;          // the same layout and strides as k
  const int64_t* kv_strides;
  float* out;              // [B, n_q, L, hd]
  const bool* mask;        // or null; key s visible to (b, l) at b * mask_strides[0] + l * [1] + s * [2]
  const int64_t* mask_strides;
  int B, n_q, n_kv, L, S, hd;
  bool causal;
};

// One ISA variant's kernels. Each call computes output columns [n0, n1) for all M rows.
struct KernelTable {
  const char* name;
  int vector_floats;  // floats per SIMD vector
  bool (*quant_supported)(int group_size, int bits);
  // Whether this variant can meet `bits`-bit weights with x rounded to int8 per block of
  // 32 (integer dot products) instead of dequantizing the weights to float32.
  bool (*has_int8)(int bits);
  size_t (*quant_scratch)(const QuantArgs& a);
  void (*prepare_quant)(const QuantArgs& a);
  void (*quant_matmul)(const QuantArgs& a, int n0, int n1);
  // The product from packed weights (kPackRows), `prepared` made by packed_prepare;
  // output tiles [t0, t1) of kPackRows columns.
  void (*packed_matmul)(const QuantArgs& a, int t0, int t1);
  bool (*packed_int8)(int bits);                     // as has_int8, for packed weights
  size_t (*packed_scratch)(const QuantArgs& a);      // bytes of `prepared`
  void (*packed_prepare)(const QuantArgs& a);        // x's sums (float), or x as int8
  void (*dense_matmul)(const DenseArgs& a, int n0, int n1);
  // The same from dense weights packed in tiles of kPackRows rows ([k][row] in each).
  void (*packed_dense)(const DenseArgs& a, int t0, int t1);
  // Units [u0, u1) of B * n_kv * L (a kv head at one position, with the query heads that
  // share it); `scores` holds (n_q / n_kv) * S floats and `visible` S ints.
  void (*attention_rows)(const AttentionArgs& a, int u0, int u1, float* scores, int* visible);
};

const KernelTable& kernels_generic();
#if defined(__x86_64__)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512vnni();
#endif

}  // namespace mlx_slm_kernels
