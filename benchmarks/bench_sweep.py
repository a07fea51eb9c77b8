"""The README's speed and memory figures, produced by `mlx-slm bench`'s own code.

    python benchmarks/bench_sweep.py                   # the standard sweep (`make bench`)
    python benchmarks/bench_sweep.py --preset full     # all sizes x precisions (make bench-full)
    python benchmarks/bench_sweep.py --sizes 270M --precisions float32 --prompt-tokens 16 \
        --gen-tokens 8 --reps 1                        # a smoke run (any grid: "custom")

Writes benchmarks/results/bench-<preset>-<UTC time>-<backend>.json (every row, with its
backend, BLAS, MLX version, machine and date), .md (the table for the README) and .png.
"""

import argparse
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path

import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX before it loads)
from mlx_slm.bench import report
from mlx_slm.bench.plot import plot
from mlx_slm.bench.precisions import precision_names
from mlx_slm.bench.sweep import BenchRequest, run_bench
from mlx_slm.errors import SlmError
from mlx_slm.progress import ProgressLine

RESULTS = Path(__file__).parent / "results"
STANDARD = {"gen_tokens": 64, "reps": 3, "time_limit": 150.0}
PRESETS = {
    # Sized for a 2-core, 24 GB machine on MLX's CPU backend: 21 minutes measured. mlx-lm is
    # compared where its CPU path finishes in minutes (float32 goes to BLAS; bfloat16 at
    # short prompts); its quantized products take minutes per token there (design.md).
    "standard": [
        BenchRequest(synthetic=("270M",), precisions=("float32", "bfloat16"),
                     prompt_lengths=(128,), compare=True, **STANDARD),
        BenchRequest(synthetic=("1.1B",), precisions=("float32",), prompt_lengths=(128,),
                     compare=True, **STANDARD),
        BenchRequest(synthetic=("270M",), precisions=("4bit",), prompt_lengths=(128,),
                     **STANDARD),
        BenchRequest(synthetic=("270M",), precisions=("float32", "bfloat16", "4bit"),
                     prompt_lengths=(1024,), **STANDARD),
        BenchRequest(synthetic=("1.1B",), precisions=("4bit",), prompt_lengths=(128,),
                     **STANDARD),
    ],
    # mlx-lm's 4-bit path on the CPU backend (float16 scales) takes seconds per token: one
    # short cell, enough for the ratio.
    "mlx-lm-4bit": [
        BenchRequest(synthetic=("270M",), precisions=("4bit",), prompt_lengths=(16,),
                     gen_tokens=4, reps=1, warmup=0, compare=True),
    ],
    # The whole grid of the issue, for Apple Silicon: cells that do not fit are skipped.
    "full": [
        BenchRequest(synthetic=("all",), prompt_lengths=(128, 1024), gen_tokens=128, reps=3,
                     compare=True),
    ],
}


def requests_from(args) -> tuple[str, list[BenchRequest]]:
    """The sweep's name and requests: a preset, or one grid when sizes, precisions or
    prompt lengths are given; --gen-tokens, --reps and the like override either."""
    overrides = {"gen_tokens": args.gen_tokens, "reps": args.reps, "compare": args.compare,
                 "bandwidth": args.bandwidth, "time_limit": args.time_limit}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.sizes or args.precisions or args.prompt_tokens:
        grid = {"synthetic": tuple(args.sizes or ("270M",)),
                "precisions": tuple(args.precisions or ()),
                "prompt_lengths": tuple(args.prompt_tokens or (128,))}
        return "custom", [BenchRequest(**{**STANDARD, **grid, **overrides})]
    return args.preset, [BenchRequest(**{**vars(r), **overrides}) for r in PRESETS[args.preset]]


def sweep_order(row: dict) -> tuple:
    """Rows by size, then precision (float32 first), then prompt length."""
    sizes = {"270M": 0, "450M": 1, "1.1B": 2, "3B": 3}
    return (sizes.get(row["model"], 4), row["model"], precision_names().index(row["precision"])
            if row["precision"] in precision_names() else 99, row["prompt_tokens"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    parser.add_argument("--sizes", nargs="+", help="270M 450M 1.1B 3B (or all)")
    parser.add_argument("--precisions", nargs="+", help="float32 float16 bfloat16 8bit 4bit ...")
    parser.add_argument("--prompt-tokens", nargs="+", type=int)
    parser.add_argument("--gen-tokens", type=int)
    parser.add_argument("--reps", type=int)
    parser.add_argument("--bandwidth", type=float, help="GB/s (default: detected or measured)")
    parser.add_argument("--time-limit", type=float, help="seconds per engine and cell")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                        help="also run mlx-lm (default: as the preset says)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    # A killed sweep (SIGTERM) still unwinds, so its temporary model copies are deleted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    try:
        rows = []
        progress = ProgressLine()
        try:
            name, requests = requests_from(args)
            for request in requests:
                rows += run_bench(request, on_progress=progress)
        finally:
            progress.close()
        rows.sort(key=sweep_order)
        stem = args.out_dir / f"bench-{name}-{stamp}-{rows[0]['backend']}"
        table = report.to_markdown(rows)
        report.write_new_file(f"{stem}.json", report.to_json(rows))
        report.write_new_file(f"{stem}.md", table)
        if any(r["status"] == "ok" for r in rows):
            plot(rows, f"{stem}.png")
    except SlmError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(table, end="")
    print(f"\nwrote {stem}.json, .md and .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
