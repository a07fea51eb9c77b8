"""What a decode step costs besides its weight products: a synthetic model at a real shape
decodes with its products as they are, then with every product replaced by a cheap op of
the same output shape. The difference is the products; the rest is the per-token overhead
(norms, RoPE, attention, the graph's small primitives) that docs/kernels.md discusses.

    python benchmarks/step_overhead.py [--size 270M] [--precision 4bit]

Writes benchmarks/results/step_overhead-<size>-<precision>-<date>.json.
"""

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX: before mlx.core)

# isort: split
import mlx.core as mx

from mlx_slm.bench.machine import machine_info
from mlx_slm.cpu import kernels

RESULTS = Path(__file__).parent / "results"
PRODUCTS = ("packed_matmul_t", "packed_quantized_matmul")


def ms_per_token(model, prompt: list[int], tokens: int, reps: int) -> float:
    from mlx_slm.generation import generate_tokens

    times = []
    for _ in range(reps):
        stream = generate_tokens(model, prompt, max_tokens=tokens)
        next(stream)  # the prompt is read: time decoding only
        start = time.perf_counter()
        count = sum(1 for _ in stream)
        times.append((time.perf_counter() - start) / count)
    return 1e3 * statistics.median(times)


def cheap(x, w, *rest):
    """A product's output shape without its work (one tiny op on x)."""
    return mx.zeros((*x.shape[:-1], w.shape[0]), x.dtype) + x[..., :1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="270M")
    parser.add_argument("--precision", default="4bit",
                        choices=["float32", "bfloat16", "8bit", "4bit"])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    import mlx_slm.quant as quant
    from mlx_slm.cpu import layers
    from mlx_slm.loader import load_model
    from mlx_slm.synthetic import published_config, write_hub_checkpoint

    dtype = "float16" if args.precision.endswith("bit") else args.precision
    with tempfile.TemporaryDirectory() as tmp:
        hub = write_hub_checkpoint(Path(tmp) / "hub", published_config(args.size), seed=0)
        model, _ = load_model(hub, dtype, prepare=False)
    if args.precision.endswith("bit"):
        quant.quantize(model, bits=int(args.precision[0]), group_size=64)
    mx.eval(model.parameters())
    layers.prepare(model)
    prompt = list(range(100, 228))
    full = ms_per_token(model, prompt, args.tokens, args.reps)
    originals = {name: getattr(kernels, name) for name in PRODUCTS}
    try:
        for name in PRODUCTS:
            setattr(kernels, name, cheap)
        rest = ms_per_token(model, prompt, args.tokens, args.reps)
    finally:
        for name, fn in originals.items():
            setattr(kernels, name, fn)
    print(f"{kernels.status()}: {args.size} {args.precision}: {full:.2f} ms a token, "
          f"{rest:.2f} ms of it outside the weight products ({full - rest:.2f} ms products)")
    stamp = datetime.date.today().isoformat()
    out = RESULTS / f"step_overhead-{args.size}-{args.precision}-{stamp}.json"
    out.write_text(json.dumps({"benchmark": "step_overhead", "machine": machine_info(),
                               "kernels": kernels.status(), "size": args.size,
                               "precision": args.precision, "ms_per_token": full,
                               "ms_outside_products": rest}, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
