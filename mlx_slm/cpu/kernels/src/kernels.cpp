// The hot loops, written once with GCC/Clang vector extensions and compiled once per ISA
// (CMakeLists.txt: generic, AVX2+FMA+F16C, AVX-512); KERNEL_NAME names the variant and
// VECTOR_BYTES its SIMD width. The int8 path lives in int8.cpp, attention in attention.cpp.
#include "attention.h"
#include "int8.h"
#include "packed.h"
#include "variant.h"

#define PASTE2(a, b) a##b
#define PASTE(a, b) PASTE2(a, b)
#define STR2(x) #x
#define STR(x) STR2(x)

namespace mlx_slm_kernels {
namespace KERNEL_NAME {
namespace {

// ---------------------------------------------------------------- quantized
// Element k of a weight row is s_g * (q_k - c) + (b_g + c * s_g), c = 2^(bits-1), g its
// group. The inner loop takes the centred integers (q - c) times x, one FMA per vector;
// each group's sum is scaled by s_g once, and (b_g + c * s_g) meets the group's sum of x,
// made once per product. Centring keeps the summed terms as small as the weights.
//
// A block is VL packed bytes = VL * (8 / bits) elements. prepare_quant permutes each whole
// block of x so that shift t of those bytes meets x[t * VL .. t * VL + VL) (no in-register
// shuffles); a tail shorter than a block stays in order.

// The prepared x, carved out of the scratch buffer.
struct FloatView {
  float* x;     // [M, K] permuted
  float* xsum;  // [M, groups] sums of x per group
};

FloatView float_view(void* base, int M, int K) {
  float* p = static_cast<float*>(base);
  return {p, p + size_t(M) * K};
}

size_t float_scratch(const QuantArgs& a) {
  return (size_t(a.M) * a.K + size_t(a.M) * (a.K / a.group_size)) * sizeof(float);
}

void float_prepare(const QuantArgs& a) {
  const int per = 8 / a.bits, blk = VL * per, K = a.K, whole = K / blk * blk;
  const int gs = a.group_size, groups = K / gs;
  const FloatView v = float_view(a.prepared, a.M, K);
  for (size_t r = 0; r < size_t(a.M); ++r) {
    const float* src = a.x + r * K;
    float* dst = v.x + r * K;
    for (int b0 = 0; b0 < whole; b0 += blk)
      for (int t = 0; t < per; ++t)
        for (int j = 0; j < VL; ++j) dst[b0 + t * VL + j] = src[b0 + j * per + t];
    for (int k = whole; k < K; ++k) dst[k] = src[k];
    for (int g = 0; g < groups; ++g) {
      float sum = 0.0f;
      for (int k = g * gs; k < (g + 1) * gs; ++k) sum += src[k];
      v.xsum[r * groups + g] = sum;
    }
  }
}

// The scale of each lane of the block at element k0: one splat when a group spans whole
// blocks; else lane j (elements k0 + j * per ..) takes its own group's.
template <int PER>
inline vf lane_scales(const QuantArgs& a, size_t row0, size_t k0) {
  const size_t gs = a.group_size;
  if (gs >= size_t(VL * PER)) return splat(scalar_at(a.scales, row0 + k0 / gs, a.sb_type));
  vf v;
  for (int j = 0; j < VL; ++j) v[j] = scalar_at(a.scales, row0 + (k0 + j * PER) / gs, a.sb_type);
  return v;
}

// sum_g (b_g + c * s_g) * xsum_g over one weight row's groups, in a fixed order.
template <ScalarType T>
float bias_term_of(const QuantArgs& a, size_t row0, const float* xsum, float c) {
  const size_t groups = a.K / a.group_size, gv = groups / VL * VL;
  vf acc = {};
  for (size_t g = 0; g < gv; g += VL) {
    const vf b = load_weights<T>(a.biases, row0 + g) + c * load_weights<T>(a.scales, row0 + g);
    acc += b * load_f32(xsum + g);
  }
  float y = hsum(acc);
  for (size_t g = gv; g < groups; ++g)
    y += (scalar_at(a.biases, row0 + g, T) + c * scalar_at(a.scales, row0 + g, T)) * xsum[g];
  return y;
}

float bias_term(const QuantArgs& a, size_t row0, const float* xsum, float c) {
  switch (a.sb_type) {
    case kFloat32: return bias_term_of<kFloat32>(a, row0, xsum, c);
    case kFloat16: return bias_term_of<kFloat16>(a, row0, xsum, c);
    default: return bias_term_of<kBFloat16>(a, row0, xsum, c);
  }
}

// The centred codes q - c as floats, for shift t of the packed bytes q. AVX-512 looks 2- and
// 4-bit codes up in a 16-entry table: vpermps reads only the low 4 bits of each lane, so
// one instruction does the mask, the subtraction and the conversion.
template <int BITS>
inline vf centred_codes(vu q, int t) {
  constexpr int32_t kCentre = 1 << (BITS - 1);
  constexpr uint32_t kMask = (1u << BITS) - 1;
#if defined(__AVX512F__) && VECTOR_BYTES == 64
  if constexpr (BITS <= 4) {
    vf table;
    for (int i = 0; i < 16; ++i) table[i] = float(int32_t(i & kMask) - kCentre);
    return (vf)_mm512_permutexvar_ps((__m512i)(q >> (t * BITS)), (__m512)table);
  }
#endif
  if constexpr (BITS < 8) q = (q >> (t * BITS)) & kMask;
  return __builtin_convertvector((vi)q - kCentre, vf);
}

template <int BITS, int MT>
inline void quant_block_fma(vf (&acc)[MT][kChains], const uint8_t* wq, const float* x, size_t K, int c0) {
  constexpr int PER = 8 / BITS;
  const vu q = widen_bytes(wq);
#pragma GCC unroll 8
  for (int t = 0; t < PER; ++t) {
    const vf w = centred_codes<BITS>(q, t);
    const int c = (c0 + t) % kChains;
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) acc[m][c] += w * load_f32(x + m * K + t * VL);
  }
}

template <int BITS, int MT>
void quant_rows(const QuantArgs& a, const FloatView& v, int n0, int n1, int m0) {
  constexpr int PER = 8 / BITS, BLK = VL * PER;
  constexpr float kCentre = 1 << (BITS - 1);
  // Blocks per unrolled step: spread one step's vectors over all the chains.
  constexpr int U = kChains / PER > 1 ? kChains / PER : 1;
  const size_t K = a.K, gs = a.group_size, groups = K / gs;
  const size_t row_bytes = K * BITS / 8;
  // A span shares its scale vector: a group, or one block holding several groups.
  const size_t span = gs > size_t(BLK) ? gs : BLK, whole = K / span * span;
  const bool unroll = (span / BLK) % U == 0;
  const float* x = v.x + size_t(m0) * K;
  const float* xsum = v.xsum + size_t(m0) * groups;
  for (int n = n0; n < n1; ++n) {
    const uint8_t* wr = a.w + size_t(n) * row_bytes;
    const size_t row0 = size_t(n) * groups;
    vf acc[MT] = {};
    for (size_t k0 = 0; k0 < whole; k0 += span) {
      vf part[MT][kChains] = {};
      size_t k = k0;
      if (unroll) {
        for (; k < k0 + span; k += U * BLK)
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u)
            quant_block_fma<BITS, MT>(part, wr + (k + u * BLK) / PER, x + k + u * BLK, K, u * PER);
      } else {
        for (; k < k0 + span; k += BLK) quant_block_fma<BITS, MT>(part, wr + k / PER, x + k, K, 0);
      }
      const vf s = lane_scales<PER>(a, row0, k0);
      for (int m = 0; m < MT; ++m) {
        vf t = part[m][0];
        for (int c = 1; c < kChains; ++c) t += part[m][c];
        acc[m] += t * s;
      }
    }
    for (int m = 0; m < MT; ++m) {
      float y = hsum(acc[m]) + bias_term(a, row0, xsum + m * groups, kCentre);
      // Elements past the last whole block (only when groups are shorter than a block).
      for (size_t k = whole; k < K; ++k) {
        const float q = (wr[k / PER] >> (k % PER * BITS)) & ((1u << BITS) - 1);
        y += (q - kCentre) * scalar_at(a.scales, row0 + k / gs, a.sb_type) * x[m * K + k];
      }
      a.y[size_t(m0 + m) * a.N + n] = y;
    }
  }
}

template <int BITS>
void quant_matmul_bits(const QuantArgs& a, int n0, int n1) {
  const FloatView v = float_view(a.prepared, a.M, a.K);
  for_tiles<kMaxRows>(a.M, n0, n1, [&](auto rows, int nb, int ne, int m) {
    quant_rows<BITS, decltype(rows)::value>(a, v, nb, ne, m);
  });
}

void float_quant_matmul(const QuantArgs& a, int n0, int n1) {
  switch (a.bits) {
    case 2: return quant_matmul_bits<2>(a, n0, n1);
    case 4: return quant_matmul_bits<4>(a, n0, n1);
    default: return quant_matmul_bits<8>(a, n0, n1);
  }
}

bool quant_supported(int group_size, int bits) {
  return (bits == 2 || bits == 4 || bits == 8) &&
      (group_size == 32 || group_size == 64 || group_size == 128);
}

// a.int8 is set only where int8_path allows it (AVX2 and up).
size_t quant_scratch(const QuantArgs& a) {
#if defined(__AVX2__)
  if (a.int8) return int8_scratch(a.M, a.K, a.group_size);
#endif
  return float_scratch(a);
}

void prepare_quant(const QuantArgs& a) {
#if defined(__AVX2__)
  if (a.int8) return int8_prepare(a);
#endif
  float_prepare(a);
}

void quant_matmul(const QuantArgs& a, int n0, int n1) {
#if defined(__AVX2__)
  if (a.int8) return int8_quant_matmul(a, n0, n1);
#endif
  float_quant_matmul(a, n0, n1);
}

// ---------------------------------------------------------------- dense
// NR weight rows against MT rows of x per step: NR + MT vector loads feed NR * MT FMAs (x
// rows are loaded once per weight-row block, not once per weight row). Each output is one
// chain of FMAs over k in order, whatever NR and MT are, so a multi-row product is
// bit-identical, row by row, to one-row products; the NR * MT independent chains hide the
// FMA latency instead of chains within an output.
constexpr int kDenseMaxRows = 4;

template <int MT>
constexpr int dense_weight_rows() {
  // MT * NR accumulators plus NR weight vectors and an x vector within the registers.
  if constexpr (VECTOR_BYTES == 64) return MT <= 4 ? 4 : 2;
  return MT <= 2 ? 4 : 2;
}

template <ScalarType T, int MT, int NR>
void dense_block(const DenseArgs& a, int n, int m0) {
  const size_t K = a.K, kv = K / VL * VL;
  const float* x = a.x + size_t(m0) * K;
  vf acc[NR][MT] = {};
  constexpr size_t item = T == kFloat32 ? 4 : 2;
  const char* next = static_cast<const char*>(a.w) + size_t(n + NR) * K * item;
  for (size_t k = 0; k < kv; k += VL) {
    // NR rows are NR short streams that the hardware prefetcher keeps losing at each row's
    // end: fetch the next block's rows at the same column, one block ahead.
    for (int r = 0; r < NR; ++r) __builtin_prefetch(next + (r * K + k) * item);
    vf w[NR];
    for (int r = 0; r < NR; ++r) w[r] = load_weights<T>(a.w, size_t(n + r) * K + k);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const vf xm = load_f32(x + m * K + k);
      for (int r = 0; r < NR; ++r) acc[r][m] += w[r] * xm;
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int m = 0; m < MT; ++m) {
      float s = hsum(acc[r][m]);
      for (size_t j = kv; j < K; ++j) s += scalar_at(a.w, size_t(n + r) * K + j, T) * x[m * K + j];
      a.y[size_t(m0 + m) * a.N + n + r] = s;
    }
}

template <ScalarType T, int MT>
void dense_rows(const DenseArgs& a, int n0, int n1, int m0) {
  constexpr int NR = dense_weight_rows<MT>();
  int n = n0;
  for (; n + NR <= n1; n += NR) dense_block<T, MT, NR>(a, n, m0);
  for (; n < n1; ++n) dense_block<T, MT, 1>(a, n, m0);
}

template <ScalarType T>
void dense_matmul_type(const DenseArgs& a, int n0, int n1) {
  for_tiles<kDenseMaxRows>(a.M, n0, n1, [&](auto rows, int nb, int ne, int m) {
    dense_rows<T, decltype(rows)::value>(a, nb, ne, m);
  });
}

void dense_matmul(const DenseArgs& a, int n0, int n1) {
  switch (a.w_type) {
    case kFloat32: return dense_matmul_type<kFloat32>(a, n0, n1);
    case kFloat16: return dense_matmul_type<kFloat16>(a, n0, n1);
    default: return dense_matmul_type<kBFloat16>(a, n0, n1);
  }
}

constexpr KernelTable kTable = {
    STR(KERNEL_NAME), VL,           quant_supported, int8_path, quant_scratch,
    prepare_quant,    quant_matmul, packed_matmul, packed_int8, packed_scratch, packed_prepare,
    dense_matmul,     packed_dense, attention_rows};

}  // namespace
}  // namespace KERNEL_NAME

const KernelTable& PASTE(kernels_, KERNEL_NAME)() {
  return KERNEL_NAME::kTable;
}

}  // namespace mlx_slm_kernels
