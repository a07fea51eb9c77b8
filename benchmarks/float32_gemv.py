"""The native float32 matrix-vector product against MLX's matmul on the BLAS it loaded
(OpenBLAS sgemv on Linux), in both weight layouts MLX offers it: x @ W.T (W [out, in], the
nn.Linear layout) and x @ W (W [in, out] contiguous). Runs alternate, so that a change in
the machine's load hits every contender alike; the median is reported as weight GB/s.

    python benchmarks/float32_gemv.py [--rounds 30] [--rows 1]

Writes benchmarks/results/float32_gemv-<date>.json (with the CPU model and load average).
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

from mlx_slm.bench.machine import load_warning, machine_info
from mlx_slm.cpu import kernels

RESULTS = Path(__file__).parent / "results"
SHAPES = [(2048, 8192), (8192, 2048)]  # (out, in): a 1.1B FFN's two products


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    info = machine_info()
    print(f"kernels {kernels.status()} | BLAS {info['blas']} | {info['cpu']} "
          f"({info['cores']} cores) | load {info['load_average']} | {info['date']}")
    if (warning := load_warning(info["load_average"])) is not None:
        print(f"warning: {warning}")
    results = []
    for out_features, in_features in SHAPES:
        w = mx.random.normal((out_features, in_features)) * 0.05
        w_in_out = mx.contiguous(w.T)
        x = mx.random.normal((args.rows, in_features))
        mx.eval(w, w_in_out, x)
        contenders = {
            "native": lambda x=x, w=w: kernels.matmul_t(x, w),
            "blas x@W.T": lambda x=x, w=w: x @ w.T,
            "blas x@W": lambda x=x, w=w_in_out: x @ w,
        }
        times = {name: [] for name in contenders}
        for fn in contenders.values():  # warm-up
            mx.eval(fn())
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                start = time.perf_counter()
                mx.eval(fn())
                times[name].append(time.perf_counter() - start)
        for name, t in times.items():
            median = statistics.median(t)
            gbps = w.nbytes / median / 1e9
            results.append({"out": out_features, "in": in_features, "rows": args.rows,
                            "contender": name, "median_ms": median * 1e3, "GBps": gbps})
            print(f"{out_features:>5}x{in_features:<5} {name:11} {median * 1e3:7.3f} ms "
                  f"{gbps:6.1f} GB/s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"float32_gemv-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"machine": info, "kernels": kernels.status(),
                               "load_average_after": machine_info()["load_average"],
                               "results": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
