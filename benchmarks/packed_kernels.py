"""Round three of the kernels, product by product (docs/kernels.md, "Round three"): packed
quantized weights with float and int8 activations, packed bfloat16 with float32 x (shift and
mask) and bfloat16 x (vdpbf16ps where the CPU has it), packed float32 against OpenBLAS for a
prompt chunk, and unpacked dense products at 1-8 rows. Each product runs over 3 (6 for the
quantized ones) distinct weight matrices per timing, at the 270M FFN shape 5120x1280.

    python benchmarks/packed_kernels.py

Writes benchmarks/results/packed_kernels-<date>.json.
"""

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
N, K = 5120, 1280


def per_matrix_ms(fn, matrices: int, reps: int = 9) -> float:
    """Median ms for one matrix's product, `fn()` doing all of them."""
    mx.eval(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times) / matrices


def main() -> int:
    mx.random.seed(0)
    rows = []

    def record(kind, m, ms, **extra):
        rows.append({"product": kind, "rows": m, "ms": ms, **extra})
        print(f"{kind:<40} rows {m:>3}: {ms:.3f} ms", *(f"{k} {v}" for k, v in extra.items()))

    for bits in (4, 8):
        packed = []
        for _ in range(6):
            wq, s, b = mx.quantize(mx.random.normal((N, K)) * 0.02, group_size=64, bits=bits)
            packed.append(kernels.pack_quantized(wq, s.astype(mx.bfloat16), b.astype(mx.bfloat16)))
        mx.eval(packed)
        for m in (1, 4, 8, 128):
            x = mx.random.normal((m, K))
            for int8 in (False, True):
                with kernels.int8_activations(int8):
                    ms = per_matrix_ms(lambda x=x, bits=bits, packed=packed: [
                        kernels.packed_quantized_matmul(x, *p, 64, bits) for p in packed],
                        len(packed))
                record(f"packed q{bits} g64, {'int8' if int8 else 'float'} x", m, ms)

    dense = {dt: [(mx.random.normal((N, K)) * 0.02).astype(dt) for _ in range(3)]
             for dt in (mx.float32, mx.bfloat16)}
    bf16_packed = [kernels.pack_dense(w) for w in dense[mx.bfloat16]]
    f32_packed = [kernels.pack_dense(w) for w in dense[mx.float32]]
    mx.eval(bf16_packed, f32_packed)
    for m in (1, 4, 128):
        x = mx.random.normal((m, K))
        for xdtype in (mx.float32, mx.bfloat16):
            xs = x.astype(xdtype)
            ms = per_matrix_ms(
                lambda xs=xs: [kernels.packed_matmul_t(xs, w) for w in bf16_packed], 3)
            record(f"packed bfloat16, {xdtype} x", m, ms)
    x = mx.random.normal((128, K))
    record("packed float32", 128, per_matrix_ms(
        lambda: [kernels.packed_matmul_t(x, w) for w in f32_packed], 3))
    record("OpenBLAS float32 (x @ W.T)", 128, per_matrix_ms(
        lambda: [x @ w.T for w in dense[mx.float32]], 3))
    for dt, weights in dense.items():
        one = None
        for m in (1, 4, 8):
            x = mx.random.normal((m, K))
            ms = per_matrix_ms(
                lambda x=x, weights=weights: [kernels.matmul_t(x, w) for w in weights], 3)
            one = one or ms
            record(f"unpacked {dt}", m, ms, vs_one_row=f"{ms / one:.2f}x")

    stamp = datetime.date.today().isoformat()
    out = RESULTS / f"packed_kernels-{stamp}.json"
    out.write_text(json.dumps({"benchmark": "packed_kernels", "machine": machine_info(),
                               "kernels": kernels.status(), "shape": [N, K], "rows": rows},
                              indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
