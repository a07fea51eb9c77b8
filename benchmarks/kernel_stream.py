"""The quantized kernels alone against llama.cpp's whole token: bytes of weights per second.

Loads a synthetic model at a real shape (prepared as `generate` runs it: weights packed,
the kernels' default activations) and times all its products for one token (every
quantized layer once, the tied head included) out of cache, as one evaluation; then times
llama.cpp's decode on the GGUF of the same seeded weights (`llama-bench -p 0`) and turns
its tok/s into bytes per second of its model file. The issue's target: ours >= 80% of
theirs.

    python benchmarks/kernel_stream.py --llama-cpp DIR [--size 270M] [--bits 4]

Writes benchmarks/results/kernel_stream-<size>-q<bits>-<date>.json.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX: before mlx.core)

# isort: split
import mlx.core as mx
import mlx.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from llama_cpp import DEFAULT_CACHE, find_tools, gguf_at, run_llama_bench  # noqa: E402

from mlx_slm.bench.machine import machine_info  # noqa: E402
from mlx_slm.cpu import kernels  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def time_products(model, runs: int) -> tuple[float, int]:
    """Median seconds for every quantized product of one token, and the bytes they read."""
    layers = [m for _, m in model.named_modules()
              if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    inputs = {}

    def token():
        outputs = []
        for m in layers:
            k = m["scales"].shape[1] * m.group_size
            x = inputs.setdefault(k, mx.random.normal((1, k)))
            product = (kernels.packed_quantized_matmul if m.cpu.packed
                       else kernels.quantized_matmul)
            outputs.append(product(x, m["weight"], m["scales"], m["biases"], m.group_size,
                                   m.bits))
        mx.eval(outputs)

    token()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        token()
        times.append(time.perf_counter() - start)
    nbytes = sum(m["weight"].nbytes + m["scales"].nbytes + m["biases"].nbytes for m in layers)
    return statistics.median(times), nbytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", metavar="DIR", default=os.environ.get("LLAMA_CPP_DIR"))
    parser.add_argument("--size", default="270M")
    parser.add_argument("--bits", type=int, choices=[4, 8], default=4)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tools = find_tools(args.llama_cpp)
    if tools is None:
        print("llama.cpp not found: pass --llama-cpp DIR (see benchmarks/README.md)",
              file=sys.stderr)
        return 2
    import mlx_slm.quant as quant
    from mlx_slm.cpu import layers
    from mlx_slm.loader import load_model
    from mlx_slm.synthetic import published_config, write_hub_checkpoint

    with tempfile.TemporaryDirectory() as tmp:  # the weights llama.cpp's GGUF is made from
        hub = write_hub_checkpoint(Path(tmp) / "hub", published_config(args.size),
                                   seed=args.seed)
        model, _ = load_model(hub, "float16", prepare=False)  # 16-bit scales: 4.5 bits a weight
    quant.quantize(model, bits=args.bits, group_size=64)
    mx.eval(model.parameters())
    layers.prepare(model)
    seconds, nbytes = time_products(model, args.runs)
    cache = DEFAULT_CACHE.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    precision = f"{args.bits}bit"
    gguf = gguf_at(args.size, precision, args.seed, cache, tools)
    theirs = run_llama_bench(tools["llama-bench"], gguf, 1, 64, 3, os.cpu_count() or 1)
    theirs_bps = theirs["model_bytes"] * theirs["gen_tps"]
    ours_bps = nbytes / seconds
    result = {
        "benchmark": "kernel_stream", "machine": machine_info(), "kernels": kernels.status(),
        "size": args.size, "bits": args.bits, "group_size": 64,
        "ours": {"products_s": seconds, "weight_bytes": nbytes, "bytes_per_s": ours_bps},
        "llama_cpp": {**theirs, "bytes_per_s": theirs_bps},
        "ratio": ours_bps / theirs_bps,
    }
    print(f"{kernels.status()}: {args.size} q{args.bits}, every product of a token "
          f"{seconds * 1e3:.2f} ms over {nbytes / 1e6:.0f} MB = {ours_bps / 1e9:.1f} GB/s; "
          f"llama.cpp's whole token {theirs['gen_tps']:.1f} tok/s x "
          f"{theirs['model_bytes'] / 1e6:.0f} MB = {theirs_bps / 1e9:.1f} GB/s; "
          f"ratio {result['ratio']:.2f} (target >= 0.8)")
    stamp = datetime.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"kernel_stream-{args.size}-q{args.bits}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
