#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "kernels.h"
#include "ops.h"
#include "rope.h"

namespace nb = nanobind;
using namespace nb::literals;
namespace k = mlx_slm_kernels;

NB_MODULE(_ext, m) {
  m.doc() = "mlx-slm native CPU kernels (MLX primitives)";
  m.def("quantized_matmul", &k::quantized_matmul, "x"_a, "w"_a, "scales"_a, "biases"_a,
        "group_size"_a, "bits"_a, nb::kw_only(), "packed"_a = false, "stream"_a = nb::none(),
        "x @ dequantize(w, scales, biases).T in MLX's affine format, on the CPU stream; "
        "packed: the arrays are packed in tiles of 16 rows (pack_rows).");
  m.def("pack_rows", []() { return k::kPackRows; }, "Rows per tile of packed weights.");
  m.def("matmul_t", &k::matmul_t, "x"_a, "w"_a, nb::kw_only(), "packed"_a = false,
        "stream"_a = nb::none(),
        "x @ w.T for float32/float16/bfloat16 w (packed: in tiles of 16 rows), on the CPU stream.");
  m.def("attention", &k::attention, "q"_a, "k"_a, "v"_a, "causal"_a, "mask"_a = nb::none(),
        nb::kw_only(), "stream"_a = nb::none(),
        "Softmax attention per query row, float32 (grouped-query), on the CPU stream.");
  m.def("qk_rope", &k::qk_rope, "qkv"_a, "norm"_a.none(), "cos"_a, "sin"_a, "n_q"_a,
        "n_kv"_a, "eps"_a, "scale"_a, nb::kw_only(), "stream"_a = nb::none(),
        "q/k RMS norm, RoPE and the query scale between the QKV product and attention.");
  m.def("supports_quantized", &k::supports_quantized, "group_size"_a, "bits"_a);
  m.def("quant_method", &k::quant_method, "bits"_a,
        "How x meets the weights: 'int8' (rounded per block of 32) or 'float'.");
  m.def("set_int8_activations", &k::set_int8_activations, "on"_a,
        "Round x to int8 per block of 32 for 4/8-bit weights where the ISA allows.");
  m.def("isa", &k::isa, "The instruction set the kernels were selected for.");
  m.def("runnable_isas", &k::runnable_isas,
        "The variants this CPU can run, widest first (values of MLX_SLM_KERNELS_ISA).");
  m.def("threads", &k::threads, "The thread pool's size (the calling thread included).");
  m.def("set_threads", &k::set_threads, "n"_a, "Resize the pool; call only when idle.");
}
