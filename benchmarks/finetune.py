"""LoRA training speed and memory, ours beside mlx-lm's `mlx_lm.lora`, in one run.

    python benchmarks/finetune.py                       # 270M shape: float32, bfloat16, 4-bit
    python benchmarks/finetune.py --size tiny --steps 3 --warmup-steps 1   # a smoke run

Both tools train the same synthetic-weight model directory (the published config's shapes,
seeded random weights, the Llama-2 tokenizer) on the same {"text"} data with the same
rank (8), scale (20), targets (every linear layer of every block), batch size and sequence
length, each in a fresh process. Training tokens/s is each tool's own report over the
steps after the warm-up (mlx-lm's clock covers its compiled step; ours covers batching
too); peak memory is MLX's allocator peak at the end. 4-bit is QLoRA: the base stays
quantized. Writes benchmarks/results/finetune-<UTC time>.json with the CPU model, load
average and runtime of the run. Run it on a quiet machine: nothing else running, load < 0.5.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOKENIZER = Path(__file__).resolve().parents[1] / "tests" / "data" / "llama2-tokenizer.model"
PRECISIONS = ("float32", "bfloat16", "4bit")


def make_model(out: Path, size: str, precision: str) -> Path:
    """A model directory mlx-lm can also load (it needs a tokenizer_config.json)."""
    from mlx_slm.apps.quantize import quantize_directory
    from mlx_slm.convert.pipeline import tokenizer_config
    from mlx_slm.synthetic import published_config, tiny_config, write_hub_checkpoint

    config = tiny_config() if size == "tiny" else published_config(f"{size}-Instruct")
    config.pop("auto_map", None)  # else transformers asks whether to run Apple's code
    dtype = "float32" if precision == "float32" else "bfloat16"
    base = write_hub_checkpoint(out / f"{size}-{dtype}", config, seed=0, dtype=dtype)
    shutil.copy(TOKENIZER, base / "tokenizer.model")
    (base / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(config)))
    if precision != "4bit":
        return base
    quantize_directory(base, out / f"{size}-4bit", group_size=32 if size == "tiny" else 64)
    return out / f"{size}-4bit"


def make_data(out: Path, seq_length: int, examples: int) -> Path:
    """{"text"} lines cut from the built-in sample, each about `seq_length` tokens."""
    from mlx_slm.apps.quality import sample_text

    words = sample_text().split()
    per_line = max(4, int(seq_length * 0.7))  # ~1.4 tokens per word in this text
    lines = [" ".join(words[(i * per_line) % (len(words) - per_line):][:per_line])
             for i in range(examples)]
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        (out / f"{split}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in lines))
    return out


def worker_ours(args) -> dict:
    import mlx.core as mx

    from mlx_slm.apps.finetune import FinetuneRequest, TrainOptions, finetune
    from mlx_slm.apps.finetune_data import DataOptions

    events = []
    with tempfile.TemporaryDirectory() as tmp:
        finetune(FinetuneRequest(
            args.model, DataOptions(args.data, max_seq_length=args.seq_length, truncate=True),
            f"{tmp}/adapter", train=TrainOptions(
                iters=args.warmup_steps + args.steps, batch_size=args.batch_size,
                learning_rate=1e-5, steps_per_report=args.warmup_steps,
                steps_per_eval=10**9, val_batches=1, save_every=10**9)),
            events.append)
    reports = [e for e in events if e["event"] == "train"][1:]
    return {"tokens_per_s": _rate(reports, "tokens_per_s"),
            "peak_memory_bytes": mx.get_peak_memory()}


def worker_mlx_lm(args) -> dict:
    import mlx.core as mx
    from mlx_lm import lora
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import load_dataset
    from mlx_lm.utils import load

    class Reports(TrainingCallback):
        def __init__(self):
            self.seen = []

        def on_train_loss_report(self, info):
            self.seen.append(info)

    with tempfile.TemporaryDirectory() as tmp:
        parsed = lora.build_parser().parse_args([
            "--model", args.model, "--train", "--data", args.data, "--num-layers", "-1",
            "--iters", str(args.warmup_steps + args.steps), "--batch-size",
            str(args.batch_size), "--max-seq-length", str(args.seq_length),
            "--steps-per-report", str(args.warmup_steps), "--steps-per-eval", str(10**9),
            "--val-batches", "1", "--save-every", str(10**9), "--adapter-path", tmp])
        for key, value in lora.CONFIG_DEFAULTS.items():
            if getattr(parsed, key, None) is None:
                setattr(parsed, key, value)
        reports = Reports()
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet  # its console table, not our JSON
            try:
                # lora.run's own steps; it would replace our callback with its reporters.
                model, tokenizer = load(parsed.model)
                train_set, valid_set, _ = load_dataset(parsed, tokenizer)
                lora.train_model(parsed, model, train_set, valid_set, reports)
            finally:
                sys.stdout = stdout
    return {"tokens_per_s": _rate(reports.seen[1:], "tokens_per_second"),
            "peak_memory_bytes": mx.get_peak_memory()}


def _rate(reports: list[dict], key: str) -> float:
    """Mean of the per-window rates after warm-up (the windows have equal step counts)."""
    if not reports:
        raise SystemExit("no report after the warm-up; raise --steps")
    return sum(r[key] for r in reports) / len(reports)


def measure(tool: str, model: Path, data: Path, args) -> dict:
    command = [sys.executable, __file__, "--worker", tool, "--model", str(model), "--data",
               str(data), "--batch-size", str(args.batch_size), "--seq-length",
               str(args.seq_length), "--steps", str(args.steps), "--warmup-steps",
               str(args.warmup_steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="270M", help="270M, 450M, ... or tiny (smoke runs)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS),
                        choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="measured steps")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--tools", nargs="+", default=["ours", "mlx-lm"],
                        choices=["ours", "mlx-lm"])
    parser.add_argument("--worker", choices=["ours", "mlx-lm"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX before it loads)

    if args.worker:
        worker = worker_ours if args.worker == "ours" else worker_mlx_lm
        print(json.dumps(worker(args)))
        return
    from mlx_slm.bench.machine import machine_info

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", args.seq_length, 4 * args.batch_size)
        for precision in args.precisions:
            model = make_model(Path(tmp), args.size, precision)
            for tool in args.tools:
                row = {"tool": tool, "precision": precision, **measure(tool, model, data, args)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "benchmark": "finetune", "size": args.size, "batch_size": args.batch_size,
        "seq_length": args.seq_length, "steps": args.steps, "warmup_steps": args.warmup_steps,
        "rank": 8, "scale": 20.0, "targets": "all linear layers of all blocks",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        **machine_info(), "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"finetune-{args.size}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
