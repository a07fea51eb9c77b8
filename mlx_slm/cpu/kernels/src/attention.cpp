// Attention for decoding (attention.h), compiled once per ISA variant like kernels.cpp.
#include "attention.h"

#include "variant.h"

namespace mlx_slm_kernels {
namespace KERNEL_NAME {
namespace {

// d-element dot product in a fixed order (hd is a multiple of 4, usually of VL): up to
// kChains independent vectors, so the FMAs of one key do not wait on each other.
inline float dot(const float* a, const float* b, int d) {
  vf acc[kChains] = {};
  int i = 0;
  for (; i + VL * kChains <= d; i += VL * kChains)
    for (int c = 0; c < kChains; ++c) acc[c] += load_f32(a + i + c * VL) * load_f32(b + i + c * VL);
  for (int c = 0; i + VL <= d; i += VL, ++c) acc[c] += load_f32(a + i) * load_f32(b + i);
  float s = sum_chains(acc);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// exp(x) for x <= 0, a vector at a time: 2^n * exp(r), r = x - n ln2 in [-ln2/2, ln2/2],
// exp(r) by its degree-6 Taylor polynomial (relative error below 2e-7).
inline vf exp_nonpositive(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;  // 2^n stays a normal float
  const vf n = __builtin_convertvector(__builtin_convertvector(x * 1.44269504f - 0.5f, vi), vf);
  const vf r = x - n * 0.693145752f - n * 1.42860677e-6f;  // ln2, split for exactness
  vf p = splat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return (vf)((vi)p + (__builtin_convertvector(n, vi) << 23));
}

}  // namespace

// Units [u0, u1) of B * n_kv * L: position l of kv head h of batch row b, for the n_q / n_kv
// query heads that share it (each key and value row is loaded once for all of them).
// Every query row runs the same sequence of operations over its visible keys, however many
// rows share its unit or how many keys are hidden: row by row, results are batch-invariant.
void attention_rows(const AttentionArgs& a, int u0, int u1, float* scores, int* visible) {
  const int hd = a.hd, groups = a.n_q / a.n_kv, S = a.S;
  for (int u = u0; u < u1; ++u) {
    const int l = u % a.L, kv = (u / a.L) % a.n_kv, b = u / (a.L * a.n_kv);
    const int64_t base = b * a.kv_strides[0] + kv * a.kv_strides[1], step = a.kv_strides[2];
    const int last = a.causal ? S - a.L + l + 1 : S;
    int keys = 0;
    if (a.mask) {
      const bool* m = a.mask + b * a.mask_strides[0] + l * a.mask_strides[1];
      for (int s = 0; s < last; ++s)
        if (m[s * a.mask_strides[2]]) visible[keys++] = s;
    } else {
      for (int s = 0; s < last; ++s) visible[keys++] = s;
    }
    // Query (and output) row of head kv * groups + g at position l.
    const auto row = [&](int g) { return (size_t(b) * a.n_q + kv * groups + g) * a.L + l; };
    if (keys == 0) {  // nothing visible: zeros (MLX's ops would give NaN or a uniform mix)
      for (int g = 0; g < groups; ++g) memset(a.out + row(g) * hd, 0, hd * sizeof(float));
      continue;
    }
    for (int s = 0; s < keys; ++s) {
      const float* k = a.k + base + visible[s] * step;
      for (int g = 0; g < groups; ++g) scores[g * S + s] = dot(a.q + row(g) * hd, k, hd);
    }
    float inv[64];  // 1 / the softmax's sum, per query head (groups <= 64, checked in ops.cpp)
    for (int g = 0; g < groups; ++g) {
      float* p = scores + g * S;
      float top = p[0];
      for (int s = 1; s < keys; ++s) top = p[s] > top ? p[s] : top;
      vf sums = {};
      int s = 0;
      for (; s + VL <= keys; s += VL) {
        const vf e = exp_nonpositive(load_f32(p + s) - top);
        memcpy(p + s, &e, sizeof e);
        sums += e;
      }
      float total = hsum(sums);
      for (; s < keys; ++s) {
        p[s] = exp_nonpositive(splat(p[s] - top))[0];
        total += p[s];
      }
      inv[g] = 1.0f / total;
      float* out = a.out + row(g) * hd;
      for (int d = 0; d < hd; ++d) out[d] = 0.0f;
    }
    for (int s = 0; s < keys; ++s) {
      const float* v = a.v + base + visible[s] * step;
      for (int g = 0; g < groups; ++g) {
        float* out = a.out + row(g) * hd;
        const float w = scores[g * S + s];
        int d = 0;
        for (; d + VL <= hd; d += VL) {
          const vf o = load_f32(out + d) + splat(w) * load_f32(v + d);
          memcpy(out + d, &o, sizeof o);
        }
        for (; d < hd; ++d) out[d] += w * v[d];
      }
    }
    for (int g = 0; g < groups; ++g) {
      float* out = a.out + row(g) * hd;
      for (int d = 0; d < hd; ++d) out[d] *= inv[g];
    }
  }
}

}  // namespace KERNEL_NAME
}  // namespace mlx_slm_kernels
