"""The CPU-backend facts the README's performance notes rest on, measured in one run.

- the memory-read ceiling (numpy sum over 512 MiB) and MLX's float32 one-row matmul
  through the BLAS it uses, one stream and split over two;
- bfloat16 and float16 one-row matmuls, one stream and split over two;
- 4-bit quantized one-row matmuls with float16 and with float32 scales;
- graph nodes in one decode step of a 16-layer model, as written (model.py) and as
  prepared for the CPU (mlx_slm/cpu/layers.py).

    python benchmarks/cpu_kernels.py

Writes benchmarks/results/cpu_kernels-<date>.json.
"""

import datetime
import io
import json
import os
import re
import statistics
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX: before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_slm.cpu.blas import blas_in_use
from mlx_slm.cpu.ops import cpu_streams

RESULTS = Path(__file__).parent / "results"
OUT, IN = 8192, 2048  # one large layer's shape: 16.8M weights


def median_seconds(fn, runs: int = 15) -> float:
    for _ in range(3):
        mx.eval(fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def split(product, weight_parts):
    streams = cpu_streams()[:2]
    return mx.concatenate([product(w, s) for w, s in zip(weight_parts, streams)], axis=-1)


def matmul_rates() -> dict:
    rates = {}
    big = np.ones(128 * 2**20, dtype=np.float32)
    start = time.perf_counter()
    for _ in range(5):
        big.sum()
    rates["numpy_sum_GBps"] = 5 * big.nbytes / (time.perf_counter() - start) / 1e9
    for dtype in (mx.float32, mx.bfloat16, mx.float16):
        w = mx.random.normal((OUT, IN)).astype(dtype)
        x = mx.random.normal((1, IN)).astype(dtype)
        halves = [w[: OUT // 2], w[OUT // 2 :]]
        mx.eval(w, x, *halves)
        name = str(dtype).split(".")[-1]
        one = median_seconds(lambda w=w, x=x: x @ w.T)
        two = median_seconds(lambda x=x, h=halves: split(
            lambda p, s: mx.matmul(x, p.T, stream=s), h))
        rates[f"{name}_one_stream_GBps"] = w.nbytes / one / 1e9
        rates[f"{name}_two_streams_GBps"] = w.nbytes / two / 1e9
        rates[f"{name}_one_stream_Gweights_per_s"] = OUT * IN / one / 1e9
    w = mx.random.normal((OUT, IN))
    x = mx.random.normal((1, IN))
    for scale_dtype in (mx.float16, mx.float32):
        q, scales, biases = mx.quantize(w.astype(scale_dtype), group_size=64, bits=4)
        mx.eval(q, scales, biases)
        xs = x.astype(scale_dtype)
        seconds = median_seconds(lambda q=q, s=scales, b=biases, xs=xs: mx.quantized_matmul(
            xs, q, s, b, transpose=True, group_size=64, bits=4), runs=5)
        name = str(scale_dtype).split(".")[-1]
        rates[f"q4_{name}_scales_Gweights_per_s"] = OUT * IN / seconds / 1e9
    return rates


def decode_step_nodes() -> dict:
    import tempfile

    import mlx_slm.cpu.layers as backend
    from mlx_slm.cache import BufferView, make_cache
    from mlx_slm.generation import prefill
    from mlx_slm.loader import load_model
    from mlx_slm.synthetic import tiny_config, write_hub_checkpoint

    config = tiny_config(num_layers=16, model_dim=64, head_dim=16, query_heads=(4,) * 16,
                         kv_heads=(1,) * 16, ffn_multipliers=(1.0,) * 16)
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_hub_checkpoint(Path(tmp) / "model", config)
        for name, prepared in (("as_written", False), ("prepared_for_cpu", True)):
            model, _ = load_model(model_dir, prepare=False)
            if prepared:
                backend.prepare(model, "cpu")
            cache = make_cache(model)
            prefill(model, mx.arange(1, 33), cache)
            mx.eval([c.state for c in cache])
            pos = mx.array(cache[0].offset)
            views = [BufferView(c.keys, c.values, pos) for c in cache]
            mask = mx.arange(cache[0].capacity) <= pos
            out = mx.compile(lambda t, m=model, v=views, k=mask: m(t, v, k))(mx.array([[5]]))
            dot = io.StringIO()
            mx.export_to_dot(dot, out)
            # Primitive nodes are labelled by their name; arrays by an id.
            counts[name] = len(re.findall(r'label ?="[A-Za-z]', dot.getvalue()))
    return counts


def main() -> None:
    record = {
        "benchmark": "cpu_kernels",
        "date": datetime.date.today().isoformat(),
        "backend": "cpu",
        "blas": blas_in_use(),
        "mlx_version": mx.__version__,
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "matrix": f"{OUT}x{IN}, one input row",
        **matmul_rates(),
        "decode_step_nodes": decode_step_nodes(),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cpu_kernels-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
