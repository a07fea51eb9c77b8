// MLX primitives running the native kernels on the CPU stream.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mlx_slm_kernels {

namespace mx = mlx::core;

// x[..., K] @ dequantize(w, scales, biases).T in MLX's affine format (as mx.quantize makes),
// or from the same arrays packed in tiles of kPackRows rows (`packed`; kernels.h).
mx::array quantized_matmul(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int group_size,
    int bits,
    bool packed = false,
    mx::StreamOrDevice s = {});

// x[..., K] @ w.T for float32, float16 or bfloat16 w [N, K] (`packed`: in tiles, kPackRows).
mx::array matmul_t(
    const mx::array& x,
    const mx::array& w,
    bool packed = false,
    mx::StreamOrDevice s = {});

// Softmax attention, float32: q [B, n_q, L, hd] (pre-scaled) over k, v [B, n_kv, S, hd],
// query head h meeting kv head h / (n_q / n_kv); causal: position l of L sees keys
// 0 .. S - L + l; a bool mask [B or 1, 1, L or 1, S] hides more. Each query row is computed
// alone over its visible keys, bit-identical to decoding it alone.
mx::array attention(
    const mx::array& q,
    const mx::array& k,
    const mx::array& v,
    bool causal,
    const std::optional<mx::array>& mask = std::nullopt,
    mx::StreamOrDevice s = {});

// Whether quantized_matmul handles this format with the selected ISA.
bool supports_quantized(int group_size, int bits);

// "int8" (x rounded to int8 per block of 32) or "float", for `bits` with the selected ISA.
std::string quant_method(int bits);
// Opt in to the int8 path where the ISA has one (off by default: it rounds x).
void set_int8_activations(bool on);

// The variant in use ("avx512vnni", "avx512", "avx2" or "generic"), and the pool's size.
std::string isa();
// The variants this CPU can run (MLX_SLM_KERNELS_ISA may name any), widest first.
std::vector<std::string> runnable_isas();
int threads();
void set_threads(int n);

class QuantizedMatmul : public mx::Primitive {
 public:
  QuantizedMatmul(mx::Stream stream, int group_size, int bits, bool packed)
      : mx::Primitive(stream), group_size_(group_size), bits_(bits), packed_(packed) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  const char* name() const override {
    return "SlmQuantizedMatmul";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  int group_size_;
  int bits_;
  bool packed_;
};

class MatmulT : public mx::Primitive {
 public:
  MatmulT(mx::Stream stream, bool packed) : mx::Primitive(stream), packed_(packed) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  const char* name() const override {
    return "SlmMatmulT";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto* o = dynamic_cast<const MatmulT*>(&other);
    return o && o->packed_ == packed_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  bool packed_;
};

class Attention : public mx::Primitive {
 public:
  Attention(mx::Stream stream, bool causal) : mx::Primitive(stream), causal_(causal) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  const char* name() const override {
    return "SlmAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  bool causal_;
};

}  // namespace mlx_slm_kernels
