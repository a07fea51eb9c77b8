"""Start-up cost: `mlx-slm --help`, and what `generate` adds before the first prompt token.

For generate, on a model whose weights take no time to read: the time from starting the
process to the first generated character, minus the prompt processing (TTFT, from the
stats line), is the start-up that the tool adds beyond reading the weights. Medians over
runs. Writes benchmarks/results/startup-<date>.json.

    python benchmarks/startup.py [--runs 7]
"""

import argparse
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOKENIZER = Path(__file__).parent.parent / "tests" / "data" / "llama2-tokenizer.model"


def help_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mlx_slm", "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def generate_startup_seconds(model_dir: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_slm", "generate", "-m", str(model_dir), "-p", "Hello",
         "-n", "2", "--ignore-eos"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(1)
    first = time.perf_counter() - start
    _, err = proc.communicate()
    ttft = float(re.search(r"TTFT ([\d.]+) s", err.decode()).group(1))
    return first - ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    from mlx_slm.backend import active_backend
    from mlx_slm.synthetic import tiny_config, write_hub_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_hub_checkpoint(Path(tmp) / "model", tiny_config())
        shutil.copy(TOKENIZER, model_dir / "tokenizer.model")
        generate_startup_seconds(model_dir)  # warm the file cache
        helps = [help_seconds() for _ in range(args.runs)]
        starts = [generate_startup_seconds(model_dir) for _ in range(args.runs)]
    record = {
        "benchmark": "startup",
        "date": datetime.date.today().isoformat(),
        "backend": active_backend(),
        "help_s": helps,
        "generate_startup_s": starts,
        "median_help_s": statistics.median(helps),
        "median_generate_startup_s": statistics.median(starts),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"startup-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"mlx-slm --help: {record['median_help_s']:.2f} s; generate start-up beyond reading "
          f"the weights: {record['median_generate_startup_s']:.2f} s (median of {args.runs}, "
          f"{record['backend']} backend); saved {out}")


if __name__ == "__main__":
    main()
