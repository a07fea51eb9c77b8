#include "ops.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels.h"
#include "mlx/allocator.h"
#include "mlx/backend/common/utils.h"
#include "mlx/backend/cpu/encoder.h"
#include "pool.h"

namespace mlx_slm_kernels {

namespace {

// The variants this CPU can run, widest first.
std::vector<const KernelTable*> runnable_tables() {
  std::vector<const KernelTable*> tables;
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512 && __builtin_cpu_supports("avx512vnni")) tables.push_back(&kernels_avx512vnni());
  if (avx512) tables.push_back(&kernels_avx512());
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    tables.push_back(&kernels_avx2());
#endif
  tables.push_back(&kernels_generic());
  return tables;
}

// The widest variant, or the one MLX_SLM_KERNELS_ISA names if this CPU can run it (to test
// a narrower variant on a wide CPU; isa() says which one runs).
const KernelTable& select_table() {
  const auto tables = runnable_tables();
  if (const char* forced = std::getenv("MLX_SLM_KERNELS_ISA"))
    for (const KernelTable* t : tables)
      if (std::strcmp(t->name, forced) == 0) return *t;
  return *tables.front();
}

const KernelTable& table() {
  static const KernelTable& t = select_table();
  return t;
}

int default_threads() {
  if (const char* env = std::getenv("MLX_SLM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? int(hw) : 1;
}

std::atomic<bool> int8_activations{false};

std::unique_ptr<ThreadPool>& pool_slot() {
  static std::unique_ptr<ThreadPool> pool;
  return pool;
}

ThreadPool& pool() {
  auto& p = pool_slot();
  if (!p) p = std::make_unique<ThreadPool>(default_threads());
  return *p;
}

ScalarType scalar_type(mx::Dtype t) {
  if (t == mx::float32) return kFloat32;
  if (t == mx::float16) return kFloat16;
  if (t == mx::bfloat16) return kBFloat16;
  throw std::invalid_argument("mlx_slm kernels: expected float32, float16 or bfloat16");
}

template <typename T>
void gather_float(const mx::array& a, float* dst) {
  const T* src = a.data<T>();
  const size_t n = a.size();
  if (a.flags().row_contiguous) {
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[mx::elem_to_loc(i, a)]);
  }
}

// Any strides and float dtype -> contiguous float32, row-major order. Done here rather
// than with mx.contiguous, which would cost a graph node per call.
void to_float32(const mx::array& a, float* dst) {
  switch (scalar_type(a.dtype())) {
    case kFloat32: return gather_float<float>(a, dst);
    case kFloat16: return gather_float<mx::float16_t>(a, dst);
    default: return gather_float<mx::bfloat16_t>(a, dst);
  }
}

// A row-contiguous view of a's bytes, copying into `copy` only when a is strided.
const void* contiguous_bytes(const mx::array& a, std::vector<uint8_t>& copy) {
  if (a.flags().row_contiguous) return a.data<void>();
  const size_t item = a.itemsize();
  copy.resize(a.size() * item);
  const auto* src = static_cast<const uint8_t*>(a.data<void>());
  for (size_t i = 0; i < a.size(); ++i)
    memcpy(copy.data() + i * item, src + mx::elem_to_loc(i, a) * item, item);
  return copy.data();
}

template <typename T>
void store_from_float(const float* src, T* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

void store_output(const float* y, mx::array& out) {
  if (out.dtype() == mx::float16) return store_from_float(y, out.data<mx::float16_t>(), out.size());
  store_from_float(y, out.data<mx::bfloat16_t>(), out.size());
}

// Splits N items (output columns, or attention's query rows) into tasks of whole granules,
// a few per thread so that a thread slowed by other work does not hold up the rest.
void parallel_split(int N, int granule, const std::function<void(int, int)>& fn) {
  ThreadPool& p = pool();
  const int tasks_wanted = p.size() == 1 ? 1 : p.size() * 4;
  int chunk = (N + tasks_wanted - 1) / tasks_wanted;
  chunk = (chunk + granule - 1) / granule * granule;
  const int tasks = (N + chunk - 1) / chunk;
  p.run(tasks, [&](int i) {
    const int n0 = i * chunk;
    fn(n0, std::min(N, n0 + chunk));
  });
}

// Output columns go in whole column tiles of the kernels.
void parallel_columns(int N, const std::function<void(int, int)>& fn) {
  parallel_split(N, 16, fn);
}

// Per-stream-thread scratch space, reused across calls.
struct Scratch {
  std::vector<float> x, y;
  std::vector<uint8_t> prepared, w, scales, biases;
  std::vector<uint32_t> pairs;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// The set-up every product shares: x gathered into contiguous float32; y written straight
// into a float32 output, or into scratch and rounded to the output's dtype afterwards.
// body(scratch, x, y, M, K) computes y[M, N] from x[M, K].
template <typename Body>
void run_product(const mx::array& x, mx::array& out, Body&& body) {
  Scratch& s = scratch();
  s.x.resize(x.size());
  to_float32(x, s.x.data());
  const bool direct = out.dtype() == mx::float32;
  if (!direct) s.y.resize(out.size());
  const int K = x.shape(-1);
  body(s, s.x.data(), direct ? out.data<float>() : s.y.data(), int(x.size() / K), K);
  if (!direct) store_output(s.y.data(), out);
}

void run_quantized(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    mx::array& out,
    int group_size,
    int bits,
    bool packed) {
  const KernelTable& t = table();
  const int N = w.shape(0);
  run_product(x, out, [&](Scratch& s, const float* xf, float* y, int M, int K) {
    QuantArgs a{
        xf,
        nullptr,
        static_cast<const uint8_t*>(contiguous_bytes(w, s.w)),
        contiguous_bytes(scales, s.scales),
        contiguous_bytes(biases, s.biases),
        scalar_type(scales.dtype()),
        y,
        M,
        N,
        K,
        group_size,
        bits,
        int8_activations.load() && (packed ? t.packed_int8(bits) : t.has_int8(bits))};
    if (packed) {
      s.prepared.resize(t.packed_scratch(a));
      a.prepared = s.prepared.data();
      t.packed_prepare(a);
      parallel_split(N / kPackRows, 1, [&](int t0, int t1) { t.packed_matmul(a, t0, t1); });
      return;
    }
    s.prepared.resize(t.quant_scratch(a));
    a.prepared = s.prepared.data();
    t.prepare_quant(a);
    parallel_columns(N, [&](int n0, int n1) { t.quant_matmul(a, n0, n1); });
  });
}

void run_dense(const mx::array& x, const mx::array& w, mx::array& out, bool packed) {
  const KernelTable& t = table();
  const int N = w.shape(0);
  run_product(x, out, [&](Scratch& s, const float* xf, float* y, int M, int K) {
    const uint32_t* pairs = nullptr;
    if (packed && x.dtype() == mx::bfloat16 && w.dtype() == mx::bfloat16) {
      // The float32 copy of bfloat16 x holds each value in its top 16 bits.
      s.pairs.resize(size_t(M) * K / 2);
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(xf);
      for (size_t i = 0; i < s.pairs.size(); ++i)
        s.pairs[i] = (bits[2 * i] >> 16) | (bits[2 * i + 1] & 0xFFFF0000u);
      pairs = s.pairs.data();
    }
    const DenseArgs a{xf, contiguous_bytes(w, s.w), scalar_type(w.dtype()), y, M, N, K, pairs};
    if (packed)
      return parallel_split(N / kPackRows, 1, [&](int t0, int t1) { t.packed_dense(a, t0, t1); });
    parallel_columns(N, [&](int n0, int n1) { t.dense_matmul(a, n0, n1); });
  });
}

void run_attention(const std::vector<mx::array>& inputs, mx::array& out, bool causal) {
  const mx::array &q = inputs[0], &k = inputs[1], &v = inputs[2];
  const KernelTable& t = table();
  Scratch& s = scratch();
  s.x.resize(q.size());
  to_float32(q, s.x.data());
  // Keys and values are read in place (a KV cache's slice) where their rows are contiguous
  // and their strides agree; otherwise from contiguous copies.
  const bool in_place = k.strides() == v.strides() && k.strides()[3] == 1;
  const float* kp = in_place ? k.data<float>() : static_cast<const float*>(contiguous_bytes(k, s.w));
  const float* vp =
      in_place ? v.data<float>() : static_cast<const float*>(contiguous_bytes(v, s.scales));
  const int hd = q.shape(3), S = k.shape(2), n_kv = k.shape(1);
  const int64_t strides[3] = {
      in_place ? int64_t(k.strides()[0]) : int64_t(n_kv) * S * hd,
      in_place ? int64_t(k.strides()[1]) : int64_t(S) * hd,
      in_place ? int64_t(k.strides()[2]) : hd};
  // The mask, [B or 1, 1, L or 1, S] (broadcast by the caller), read through its strides.
  const bool has_mask = inputs.size() == 4;
  int64_t mask_strides[3] = {0, 0, 0};
  if (has_mask) {
    const mx::array& m = inputs[3];
    const int dims[3] = {0, 2, 3};
    for (int i = 0; i < 3; ++i)
      mask_strides[i] = m.shape(dims[i]) == 1 ? 0 : int64_t(m.strides()[dims[i]]);
  }
  const AttentionArgs a{
      s.x.data(), kp, vp, strides, out.data<float>(), has_mask ? inputs[3].data<bool>() : nullptr,
      mask_strides, q.shape(0), q.shape(1), n_kv, q.shape(2), S, hd, causal};
  parallel_split(a.B * n_kv * a.L, 1, [&](int u0, int u1) {
    thread_local std::vector<float> scores;
    thread_local std::vector<int> visible;
    scores.resize(size_t(a.n_q / n_kv) * S);
    visible.resize(S);
    t.attention_rows(a, u0, u1, scores.data(), visible.data());
  });
}

mx::Stream cpu_stream(mx::StreamOrDevice s) {
  mx::Stream stream = mx::to_stream(s);
  if (stream.device != mx::Device::cpu)
    throw std::invalid_argument("mlx_slm kernels run on the CPU stream only");
  return stream;
}

void check_float(const mx::array& a, const char* what) {
  scalar_type(a.dtype());
  (void)what;
}

mx::Shape output_shape(const mx::array& x, int N) {
  mx::Shape shape = x.shape();
  shape.back() = N;
  return shape;
}

}  // namespace

bool supports_quantized(int group_size, int bits) {
  return table().quant_supported(group_size, bits);
}

std::string quant_method(int bits) {
  return int8_activations.load() && table().has_int8(bits) ? "int8" : "float";
}

void set_int8_activations(bool on) {
  int8_activations.store(on);
}

std::string isa() {
  return table().name;
}

std::vector<std::string> runnable_isas() {
  std::vector<std::string> names;
  for (const KernelTable* t : runnable_tables()) names.push_back(t->name);
  return names;
}

int threads() {
  return pool().size();
}

void set_threads(int n) {
  if (n < 1) throw std::invalid_argument("threads must be >= 1");
  pool_slot() = std::make_unique<ThreadPool>(n);
}

mx::array quantized_matmul(
    const mx::array& x,
    const mx::array& w,
    const mx::array& scales,
    const mx::array& biases,
    int group_size,
    int bits,
    bool packed,
    mx::StreamOrDevice s) {
  if (!supports_quantized(group_size, bits))
    throw std::invalid_argument("quantized_matmul: unsupported bits or group_size");
  if (x.ndim() < 1 || w.ndim() != 2 || w.dtype() != mx::uint32)
    throw std::invalid_argument("quantized_matmul: w must be a 2-D uint32 array");
  check_float(x, "x");
  const int K = x.shape(-1), N = w.shape(0);
  if (K % group_size != 0 || int64_t(w.shape(1)) * 32 != int64_t(K) * bits)
    throw std::invalid_argument("quantized_matmul: x and w disagree on the input size");
  const mx::Shape sb{N, K / group_size};
  if (scales.shape() != sb || biases.shape() != sb || scales.dtype() != biases.dtype())
    throw std::invalid_argument("quantized_matmul: scales/biases have the wrong shape");
  if (packed && N % kPackRows != 0)
    throw std::invalid_argument("quantized_matmul: packed weights need whole tiles of 16 rows");
  check_float(scales, "scales");
  const mx::Dtype dtype = mx::promote_types(x.dtype(), scales.dtype());
  return mx::array(
      output_shape(x, N),
      dtype,
      std::make_shared<QuantizedMatmul>(cpu_stream(s), group_size, bits, packed),
      {x, w, scales, biases});
}

mx::array matmul_t(const mx::array& x, const mx::array& w, bool packed, mx::StreamOrDevice s) {
  if (x.ndim() < 1 || w.ndim() != 2 || x.shape(-1) != w.shape(1))
    throw std::invalid_argument("matmul_t: shapes must be [..., K] and [N, K]");
  if (packed && (w.shape(0) % kPackRows != 0 || (w.dtype() == mx::bfloat16 && w.shape(1) % 2)))
    throw std::invalid_argument(
        "matmul_t: packed weights need whole tiles of 16 rows (and, bfloat16, pairs of columns)");
  check_float(x, "x");
  check_float(w, "w");
  return mx::array(
      output_shape(x, w.shape(0)),
      mx::promote_types(x.dtype(), w.dtype()),
      std::make_shared<MatmulT>(cpu_stream(s), packed),
      {x, w});
}

mx::array attention(
    const mx::array& q,
    const mx::array& k,
    const mx::array& v,
    bool causal,
    const std::optional<mx::array>& mask,
    mx::StreamOrDevice s) {
  if (q.ndim() != 4 || k.ndim() != 4 || v.shape() != k.shape() || q.dtype() != mx::float32 ||
      k.dtype() != mx::float32 || v.dtype() != mx::float32)
    throw std::invalid_argument("attention: float32 q [B, n_q, L, hd], k and v [B, n_kv, S, hd]");
  if (q.shape(0) != k.shape(0) || q.shape(3) != k.shape(3) || q.shape(1) % k.shape(1) != 0 ||
      q.shape(1) / k.shape(1) > 64 || (causal && q.shape(2) > k.shape(2)))
    throw std::invalid_argument("attention: q, k and v disagree on their shapes");
  std::vector<mx::array> inputs{q, k, v};
  if (mask) {
    const auto& m = *mask;
    if (m.dtype() != mx::bool_ || m.ndim() != 4 || m.shape(1) != 1 || m.shape(3) != k.shape(2) ||
        (m.shape(0) != 1 && m.shape(0) != q.shape(0)) ||
        (m.shape(2) != 1 && m.shape(2) != q.shape(2)))
      throw std::invalid_argument("attention: the mask must be bool [B or 1, 1, L or 1, S]");
    inputs.push_back(m);
  }
  return mx::array(
      q.shape(), mx::float32, std::make_shared<Attention>(cpu_stream(s), causal), inputs);
}

void QuantizedMatmul::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch([inputs, out, gs = group_size_, bits = bits_, packed = packed_]() mutable {
    run_quantized(inputs[0], inputs[1], inputs[2], inputs[3], out, gs, bits, packed);
  });
}

void QuantizedMatmul::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("SlmQuantizedMatmul runs on the CPU only");
}

bool QuantizedMatmul::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const QuantizedMatmul*>(&other);
  return o && o->group_size_ == group_size_ && o->bits_ == bits_ && o->packed_ == packed_;
}

std::vector<mx::Shape> QuantizedMatmul::output_shapes(const std::vector<mx::array>& inputs) {
  return {output_shape(inputs[0], inputs[1].shape(0))};
}

void MatmulT::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch(
      [inputs, out, packed = packed_]() mutable { run_dense(inputs[0], inputs[1], out, packed); });
}

void MatmulT::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("SlmMatmulT runs on the CPU only");
}

std::vector<mx::Shape> MatmulT::output_shapes(const std::vector<mx::array>& inputs) {
  return {output_shape(inputs[0], inputs[1].shape(0))};
}

void Attention::eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) {
  mx::array& out = outputs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : inputs) encoder.set_input_array(a);
  encoder.set_output_array(out);
  encoder.dispatch(
      [inputs, out, causal = causal_]() mutable { run_attention(inputs, out, causal); });
}

void Attention::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("SlmAttention runs on the CPU only");
}

bool Attention::is_equivalent(const mx::Primitive& other) const {
  const auto* o = dynamic_cast<const Attention*>(&other);
  return o && o->causal_ == causal_;
}

std::vector<mx::Shape> Attention::output_shapes(const std::vector<mx::array>& inputs) {
  return {inputs[0].shape()};
}

}  // namespace mlx_slm_kernels
