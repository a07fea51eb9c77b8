// q/k RMS norm, RoPE, the query scale and the float32 casts between the QKV product and
// attention, as one primitive: about 16 small MLX primitives per layer and step otherwise,
// whose scheduling costs more than their arithmetic when decoding.
#include "rope.h"

#include <cmath>
#include <stdexcept>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace mlx_slm_kernels {

namespace {

float read(const mx::array& a, int64_t at) {
  switch (a.dtype()) {
    case mx::float32: return a.data<float>()[at];
    case mx::float16: return static_cast<float>(a.data<mx::float16_t>()[at]);
    default: return static_cast<float>(a.data<mx::bfloat16_t>()[at]);
  }
}

// v rounded to `dtype` (half-precision models round after each op, as model.py does).
float round_to(mx::Dtype dtype, float v) {
  if (dtype == mx::bfloat16) return static_cast<float>(static_cast<mx::bfloat16_t>(v));
  if (dtype == mx::float16) return static_cast<float>(static_cast<mx::float16_t>(v));
  return v;
}

// Element (i, j, k, l) of a 4-D array (stride 0 on a broadcast dimension of size 1).
int64_t at4(const mx::array& a, int i, int j, int k, int l) {
  const auto& st = a.strides();
  auto s = [&](int d) { return a.shape(d) == 1 ? int64_t(0) : int64_t(st[d]); };
  return i * s(0) + j * s(1) + k * s(2) + l * s(3);
}

void run(const std::vector<mx::array>& in, std::vector<mx::array>& out, int n_q, int n_kv,
         float eps, float scale) {
  const mx::array &qkv = in[0], &cos = in[1], &sin = in[2];
  const bool has_norm = in.size() == 4;
  const int B = qkv.shape(0), L = qkv.shape(2), hd = qkv.shape(3), half = hd / 2;
  float* q = out[0].data<float>();
  float* k = out[1].data<float>();
  float* v = out[2].data<float>();
  std::vector<float> x(hd);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < n_q + 2 * n_kv; ++h)
      for (int l = 0; l < L; ++l) {
        for (int d = 0; d < hd; ++d) x[d] = read(qkv, at4(qkv, b, h, l, d));
        if (h >= n_q + n_kv) {  // values: cast only
          float* dst = v + ((size_t(b) * n_kv + h - n_q - n_kv) * L + l) * hd;
          for (int d = 0; d < hd; ++d) dst[d] = x[d];
          continue;
        }
        if (has_norm) {
          float ss = 0.0f;
          for (int d = 0; d < hd; ++d) ss += x[d] * x[d];
          const float r = 1.0f / std::sqrt(ss / hd + eps);
          const float* w = in[3].data<float>() + size_t(h) * hd;
          const mx::Dtype t = qkv.dtype();
          for (int d = 0; d < hd; ++d) x[d] = round_to(t, round_to(t, x[d] * r) * w[d]);
        }
        const bool is_q = h < n_q;
        float* dst = is_q ? q + ((size_t(b) * n_q + h) * L + l) * hd
                          : k + ((size_t(b) * n_kv + h - n_q) * L + l) * hd;
        const float f = is_q ? scale : 1.0f;
        for (int d = 0; d < half; ++d) {
          // cos/sin are [L, half] or [B, 1, L, half] (one position offset per row).
          const int64_t t = cos.ndim() == 2 ? int64_t(l) * half + d : at4(cos, b, 0, l, d);
          const float c = cos.data<float>()[t], s = sin.data<float>()[t];
          const float x1 = x[d], x2 = x[d + half];
          dst[d] = (x1 * c - x2 * s) * f;
          dst[d + half] = (x2 * c + x1 * s) * f;
        }
      }
}

}  // namespace

std::vector<mx::array> qk_rope(
    const mx::array& qkv,
    const std::optional<mx::array>& norm,
    const mx::array& cos,
    const mx::array& sin,
    int n_q,
    int n_kv,
    float eps,
    float scale,
    mx::StreamOrDevice s) {
  const mx::Stream stream = mx::to_stream(s);
  if (stream.device != mx::Device::cpu)
    throw std::invalid_argument("mlx_slm kernels run on the CPU stream only");
  if (qkv.ndim() != 4 || qkv.shape(1) != n_q + 2 * n_kv || qkv.shape(3) % 2 != 0)
    throw std::invalid_argument("qk_rope: qkv must be [B, n_q + 2 n_kv, L, hd]");
  const int B = qkv.shape(0), L = qkv.shape(2), hd = qkv.shape(3);
  auto table_ok = [&](const mx::array& t) {
    if (t.dtype() != mx::float32 || !t.flags().row_contiguous) return false;
    if (t.ndim() == 2) return t.shape(0) == L && t.shape(1) == hd / 2;
    return t.ndim() == 4 && t.shape(0) == B && t.shape(1) == 1 && t.shape(2) == L &&
        t.shape(3) == hd / 2;
  };
  if (!table_ok(cos) || !table_ok(sin) || cos.shape() != sin.shape())
    throw std::invalid_argument("qk_rope: cos/sin must be float32 [L, hd/2] or [B, 1, L, hd/2]");
  std::vector<mx::array> inputs{qkv, cos, sin};
  if (norm) {
    if (norm->dtype() != mx::float32 || norm->shape() != mx::Shape{n_q + n_kv, hd} ||
        !norm->flags().row_contiguous)
      throw std::invalid_argument("qk_rope: norm must be float32 [n_q + n_kv, hd]");
    inputs.push_back(*norm);
  }
  return mx::array::make_arrays(
      {{B, n_q, L, hd}, {B, n_kv, L, hd}, {B, n_kv, L, hd}},
      {mx::float32, mx::float32, mx::float32},
      std::make_shared<QkRope>(stream, n_q, n_kv, eps, scale), inputs);
}

void QkRope::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  for (auto& o : outputs) o.set_data(mx::allocator::malloc(o.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  for (auto& o : outputs) encoder.set_output_array(o);
  encoder.dispatch([inputs, outputs, n_q = n_q_, n_kv = n_kv_, eps = eps_,
                    scale = scale_]() mutable { run(inputs, outputs, n_q, n_kv, eps, scale); });
}

void QkRope::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("SlmQkRope runs on the CPU only");
}

bool QkRope::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const QkRope*>(&other);
  return o && o->n_q_ == n_q_ && o->n_kv_ == n_kv_ && o->eps_ == eps_ && o->scale_ == scale_;
}

std::vector<mx::Shape> QkRope::output_shapes(const std::vector<mx::array>& inputs) {
  const auto& qkv = inputs[0];
  const int B = qkv.shape(0), L = qkv.shape(2), hd = qkv.shape(3);
  return {{B, n_q_, L, hd}, {B, n_kv_, L, hd}, {B, n_kv_, L, hd}};
}

}  // namespace mlx_slm_kernels
