// The step between the QKV product and attention as one primitive (rope.cpp).
#pragma once

#include <optional>

#include "mlx/ops.h"
#include "mlx/primitives.h"

namespace mlx_slm_kernels {

namespace mx = mlx::core;

// qkv [B, n_q + 2 n_kv, L, hd] (any float dtype and strides) -> float32 queries
// [B, n_q, L, hd] (RMS-normed by the rows of `norm` [n_q + n_kv, hd] if given, rotated
// half-split by cos/sin [L or B x 1 x L, hd / 2], times `scale`), keys (the same, unscaled)
// and values [B, n_kv, L, hd]. Each (row, head, position) is computed alone, in order.
std::vector<mx::array> qk_rope(
    const mx::array& qkv,
    const std::optional<mx::array>& norm,
    const mx::array& cos,
    const mx::array& sin,
    int n_q,
    int n_kv,
    float eps,
    float scale,
    mx::StreamOrDevice s = {});

class QkRope : public mx::Primitive {
 public:
  QkRope(mx::Stream stream, int n_q, int n_kv, float eps, float scale)
      : mx::Primitive(stream), n_q_(n_q), n_kv_(n_kv), eps_(eps), scale_(scale) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  void eval_gpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs)
      override;
  const char* name() const override {
    return "SlmQkRope";
  }
  bool is_equivalent(const mx::Primitive& other) const override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;

 private:
  int n_q_, n_kv_;
  float eps_, scale_;
};

}  // namespace mlx_slm_kernels
