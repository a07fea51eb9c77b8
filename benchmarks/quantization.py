"""Size, memory, speed and quality per precision at synthetic OpenELM shapes: the README table.

For each size, a seeded synthetic checkpoint is written in float32 (the Hub's precision for
the base models, and the reference), float16 and bfloat16 (the same draws, rounded), and
the float16 one is quantized (as `mlx-slm quantize` does) to each bit width and mixed recipe.
Per row: size on disk, weight memory and its ratio to float16, bits per weight; perplexity,
mean KL(float32 || row) and top-1 agreement on the first --tokens tokens of the built-in
sample (float32 compute, so the figures isolate the weights' precision); prompt and decode
tok/s in the row's own precision through generate_tokens (after a warm-up; EOS ignored;
short runs, so noisy). Writes JSON under benchmarks/results/ and prints a Markdown table.

    python benchmarks/quantization.py --sizes 270M,1.1B --tokens 256 \\
        --prompt-tokens 128 --decode-tokens 32
"""

import argparse
import datetime
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

# isort: off
import mlx_slm  # noqa: F401  (first: it puts the optimized BLAS under MLX's CPU backend)
import mlx.core as mx
# isort: on

from mlx_slm.apps.quality import sample_text
from mlx_slm.apps.quality_report import compare
from mlx_slm.apps.quantize import quantize_directory
from mlx_slm.backend import active_backend
from mlx_slm.cpu.blas import blas_in_use
from mlx_slm.cpu.report import runtime_report
from mlx_slm.generation import DecodeStep, generate_tokens
from mlx_slm.loader import load_model
from mlx_slm.synthetic import published_config, write_hub_checkpoint
from mlx_slm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FLOATS = ("float32", "float16", "bfloat16")
DEFAULT_PRECISIONS = ("float32,float16,bfloat16,8,6,5,4,3,2,"
                      "4:early,4:early-embed,3:early-embed,3:early-embed-attn")


def model_dirs(size: str, precisions: list[str], group_size: int, workdir: Path, seed: int,
               tokenizer: Path) -> dict[str, Path]:
    """Write the float directories and quantize the float16 one: {precision: directory}."""
    config = published_config(size)
    dirs = {}
    for dtype in FLOATS:
        if dtype in precisions or dtype in ("float32", "float16"):
            out = write_hub_checkpoint(workdir / f"{size}-{dtype}", config, seed, dtype)
            shutil.copy(tokenizer, out / "tokenizer.model")
            dirs[dtype] = out
    for precision in precisions:
        if precision not in FLOATS:
            bits, _, recipe = precision.partition(":")
            out = workdir / f"{size}-{precision.replace(':', '-')}"
            quantize_directory(dirs["float16"], out, int(bits), group_size, recipe or None)
            dirs[precision] = out
    return dirs


def speed(model_dir: Path, prompt: list[int], decode_tokens: int) -> dict:
    """Prompt and decode tok/s and MLX's peak memory, in the directory's own precision."""
    model, _ = load_model(model_dir)
    step = DecodeStep(model)
    list(generate_tokens(model, prompt[:8], max_tokens=2, step=step))  # warm-up
    mx.reset_peak_memory()
    start = time.perf_counter()
    first = last = None
    count = 0
    for _ in generate_tokens(model, prompt, max_tokens=decode_tokens, stop_ids=(), step=step):
        last = time.perf_counter()
        first = first or last
        count += 1
    return {
        "prompt_tps": len(prompt) / (first - start),
        "decode_tps": (count - 1) / (last - first) if count > 1 else 0.0,
        "peak_memory_bytes": mx.get_peak_memory(),
    }


def row(size: str, precision: str, reference: Path, model_dir: Path, args,
        prompt: list[int]) -> dict:
    report = compare(reference, model_dir, max_tokens=args.tokens)
    quant = report["quant"]
    recipe = precision.partition(":")[2]
    return {
        "size": size, "precision": precision,
        "label": quant["precision"] + (f" ({recipe})" if recipe else ""),
        "size_on_disk_bytes": quant["size_on_disk_bytes"], "weight_bytes": quant["weight_bytes"],
        "float16_ratio": quant["float16_ratio"], "bits_per_weight": quant["bits_per_weight"],
        "perplexity": report["perplexity_quant"], "reference_perplexity": report["perplexity"],
        "kl_mean": report["kl_mean"], "top1_agreement": report["top1_agreement"],
        **speed(model_dir, prompt, args.decode_tokens),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| size | precision | disk | weight memory | x float16 | bits/weight | perplexity "
        "| KL vs float32 | top-1 | prompt tok/s | decode tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['label']} | {r['size_on_disk_bytes'] / 1e9:.3f} GB "
            f"| {r['weight_bytes'] / 1e9:.3f} GB | {r['float16_ratio']:.3f} "
            f"| {r['bits_per_weight']:.2f} | {r['perplexity']:.1f} | {r['kl_mean']:.3g} "
            f"| {r['top1_agreement']:.1%} | {r['prompt_tps']:.1f} | {r['decode_tps']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="270M,1.1B", help="published shapes, comma-separated")
    parser.add_argument("--precisions", default=DEFAULT_PRECISIONS,
                        help="float32, float16, bfloat16, BITS or BITS:RECIPE, comma-separated")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256, help="sample tokens scored")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=str(ROOT / "tests/data/llama2-tokenizer.model"))
    parser.add_argument("--workdir", default=None,
                        help="where the model directories go (default: a temporary directory)")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()

    precisions = args.precisions.split(",")
    tokenizer = Path(args.tokenizer)
    prompt = Tokenizer(tokenizer).encode(sample_text())[: args.prompt_tokens]
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for size in args.sizes.split(","):
            dirs = model_dirs(size, precisions, args.group_size, Path(workdir), args.seed,
                              tokenizer)
            for precision in precisions:
                rows.append(row(size, precision, dirs["float32"], dirs[precision], args, prompt))
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            for path in dirs.values():
                shutil.rmtree(path)
    date = datetime.date.today().isoformat()
    result = {
        "date": date, **runtime_report(), "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(), "mlx": mx.__version__,
        "weights": f"synthetic (seed {args.seed})", "group_size": args.group_size,
        "tokens": args.tokens, "prompt_tokens": len(prompt),
        "decode_tokens": args.decode_tokens, "rows": rows,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks/results" / f"quantization_{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{markdown(rows)}\n\n{active_backend()} backend (BLAS: {blas_in_use()}), "
          f"MLX {mx.__version__}, {date}; synthetic weights. Wrote {out}")


if __name__ == "__main__":
    main()
