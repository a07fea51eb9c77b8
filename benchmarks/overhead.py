"""Per-token host overhead: decode on a 16-layer model of negligible width.

Compute is nothing there, so ms/token is graph building, dispatch and synchronisation:
what limits the small OpenELM sizes on every backend. Ours and mlx-lm run in separate
processes, alternately (A B A B ...), on the same checkpoint; the ratio is taken pair by
pair, since these machines are noisy. Writes benchmarks/results/overhead-<date>.json.

    python benchmarks/overhead.py [--pairs 5] [--tokens 300]
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx_slm  # noqa: F401  (before mlx.core: it puts the optimized BLAS under MLX)

RESULTS = Path(__file__).parent / "results"

WORKER = r"""
import sys, time
import mlx_slm
from mlx_slm.bench.mlx_lm_peer import MlxLmEngine
from mlx_slm.bench.engines import OurEngine
engine = OurEngine() if sys.argv[1] == "ours" else MlxLmEngine()
model = engine.load(sys.argv[2])
tokens = int(sys.argv[3])
prompt = list(range(1, 33))
list(engine.tokens(model, prompt, tokens))  # warm-up (and compilation)
first = last = None
for count, _ in enumerate(engine.tokens(model, prompt, tokens), 1):
    last = time.perf_counter()
    first = first or last
print((last - first) / (count - 1) * 1e3)
"""


def ms_per_token(engine: str, model_dir: Path, tokens: int) -> float:
    done = subprocess.run([sys.executable, "-c", WORKER, engine, str(model_dir), str(tokens)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args()

    import mlx.core as mx

    from mlx_slm.cpu.report import runtime_report
    from mlx_slm.synthetic import tiny_config, write_hub_checkpoint

    config = tiny_config(num_layers=16, model_dim=64, head_dim=16, query_heads=(4,) * 16,
                         kv_heads=(1,) * 16, ffn_multipliers=(1.0,) * 16)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_hub_checkpoint(Path(tmp) / "model", config)
        pairs = []
        for _ in range(args.pairs):
            ours = ms_per_token("ours", model_dir, args.tokens)
            theirs = ms_per_token("mlx-lm", model_dir, args.tokens)
            pairs.append({"ours_ms": ours, "mlx_lm_ms": theirs, "ratio": ours / theirs})
            print(pairs[-1], file=sys.stderr)
    record = {
        "benchmark": "overhead",
        "date": datetime.date.today().isoformat(),
        **runtime_report(),
        "mlx_version": mx.__version__,
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "shape": "16 layers, model_dim 64, 4 query / 1 kv heads of 16, FFN x1, vocab 32000",
        "dtype": "float32",
        "tokens": args.tokens,
        "pairs": pairs,
        "median_ours_ms": statistics.median(p["ours_ms"] for p in pairs),
        "median_mlx_lm_ms": statistics.median(p["mlx_lm_ms"] for p in pairs),
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"overhead-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"per-token host overhead ({record['backend']} backend, {record['dtype']}, "
          f"{record['shape']}): ours {record['median_ours_ms']:.2f} ms, mlx-lm "
          f"{record['median_mlx_lm_ms']:.2f} ms, ours/mlx-lm {record['median_ratio']:.2f} "
          f"(median of {len(pairs)} pairs); saved {out}")


if __name__ == "__main__":
    main()
