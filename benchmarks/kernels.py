"""The native CPU kernels (mlx_slm.cpu.kernels) against MLX's own ops, in one run: time,
weight bytes streamed per second and the speed-up, per kernel, layer shape and row count.

Shapes are the 270M and 1.1B layers (out x in); rows are decode (1), batched decode /
speculative verification (4, 16) and a prompt chunk (128). MLX's quantized and half
products are slow here, so the peer is timed with fewer repetitions (the median still).

    python benchmarks/kernels.py [--quick] [--scales bfloat16]

Writes benchmarks/results/kernels-<date>.json.
"""

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX: before mlx.core)

# isort: split
import mlx.core as mx

from mlx_slm.bench.machine import machine_info
from mlx_slm.cpu import kernels

RESULTS = Path(__file__).parent / "results"
SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632), (16384, 2048)]
ROWS = [1, 4, 16, 128]
DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}


def median_seconds(fn, x, budget_s: float, max_runs: int = 50) -> float:
    """Median of fn(x) over as many runs as fit in budget_s (at least 3), after a warm-up."""
    mx.eval(fn(x))
    times = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < max_runs):
        start = time.perf_counter()
        mx.eval(fn(x))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases(scales_dtype):
    """(kernel name, weight bytes, native fn maker, MLX fn maker) for one weight matrix."""
    def quant(bits):
        def make(w):
            wq, s, b = mx.quantize(w, group_size=64, bits=bits)
            s, b = s.astype(scales_dtype), b.astype(scales_dtype)
            mx.eval(wq, s, b)
            nbytes = wq.nbytes + s.nbytes + b.nbytes
            return nbytes, (lambda x: kernels.quantized_matmul(x, wq, s, b, 64, bits)), (
                lambda x: mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=64,
                                              bits=bits))
        return make

    def dense(dtype):
        def make(w):
            wd = w.astype(dtype)
            mx.eval(wd)
            return wd.nbytes, (lambda x: kernels.matmul_t(x, wd)), (lambda x: x @ wd.T)
        return make

    return [("q4 g64", quant(4)), ("q8 g64", quant(8)), ("bfloat16", dense(mx.bfloat16)),
            ("float16", dense(mx.float16)), ("float32", dense(mx.float32))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, rows 1 and 16")
    parser.add_argument("--scales", choices=sorted(DTYPES), default="bfloat16",
                        help="dtype of the quantization scales/biases and of x")
    args = parser.parse_args()
    shapes = SHAPES[:2] if args.quick else SHAPES
    rows = [1, 16] if args.quick else ROWS
    dtype = DTYPES[args.scales]
    info = machine_info()
    print(f"backend {info['backend']} | kernels {kernels.status()} | {info['cpu']} "
          f"({info['cores']} cores) | BLAS {info['blas']} | mlx {info['mlx_version']} | "
          f"x and scales {args.scales} | {info['date']}")
    print(f"{'kernel':9} {'shape':>11} {'M':>4} {'native ms':>10} {'GB/s':>6} "
          f"{'mlx ms':>9} {'GB/s':>6} {'speed-up':>8}")
    rows_out = []
    for n, k in shapes:
        w = mx.random.normal((n, k)) * 0.05
        for name, make in cases(dtype):
            nbytes, native, peer = make(w)
            for m in rows:
                x = mx.random.normal((m, k)).astype(dtype)
                t_native = median_seconds(native, x, 0.5)
                t_peer = median_seconds(peer, x, 1.0 if m < 128 else 0.2, 15)
                row = {"kernel": name, "out": n, "in": k, "rows": m, "weight_bytes": nbytes,
                       "native_ms": t_native * 1e3, "mlx_ms": t_peer * 1e3,
                       "native_GBps": nbytes / t_native / 1e9,
                       "mlx_GBps": nbytes / t_peer / 1e9, "speedup": t_peer / t_native}
                rows_out.append(row)
                print(f"{name:9} {n:>5}x{k:<5} {m:>4} {row['native_ms']:>10.3f} "
                      f"{row['native_GBps']:>6.1f} {row['mlx_ms']:>9.3f} {row['mlx_GBps']:>6.1f} "
                      f"{row['speedup']:>7.1f}x", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"kernels-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"machine": info, "kernels": kernels.status(),
                               "x_and_scales_dtype": args.scales, "rows": rows_out}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
