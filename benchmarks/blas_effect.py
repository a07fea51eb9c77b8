"""What an optimized BLAS buys MLX's Linux CPU backend: float32 prompt and decode tok/s.

Four processes on the same synthetic float32 checkpoint (270M shape by default), since the
BLAS is chosen per process: ours and mlx-lm, each with MLX's bundled reference BLAS
(MLX_SLM_BLAS=off; mlx-lm as shipped) and with the optimized one that mlx-slm loads
(mlx-lm given the same BLAS by importing mlx_slm first). Writes a JSON result under
benchmarks/results/ and prints a Markdown table.

    python benchmarks/blas_effect.py [--size 270M] [--prompt 128] [--tokens 16]
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

WORKER = r"""
import json, sys, time
import mlx_slm  # preloads the BLAS unless MLX_SLM_BLAS=off
from mlx_slm.cpu.blas import blas_in_use
from mlx_slm.bench.mlx_lm_peer import MlxLmEngine
from mlx_slm.bench.engines import OurEngine
engine = OurEngine() if sys.argv[1] == "ours" else MlxLmEngine()
model = engine.load(sys.argv[2])
prompt_len, tokens = int(sys.argv[3]), int(sys.argv[4])
prompt = [1 + (i * 7919) % 31000 for i in range(prompt_len)]
list(engine.tokens(model, prompt, 2))  # warm-up
start = time.perf_counter()
first = last = None
for count, _ in enumerate(engine.tokens(model, prompt, tokens), 1):
    last = time.perf_counter()
    first = first or last
print(json.dumps({"prompt_tps": prompt_len / (first - start),
                  "generation_tps": (count - 1) / (last - first), "blas": blas_in_use()}))
"""


def run_worker(engine: str, model_dir: Path, blas: str, prompt: int, tokens: int) -> dict:
    env = {**os.environ, "MLX_SLM_QUIET_BLAS": "1"}
    env.pop("MLX_SLM_BLAS", None)
    if blas == "reference":
        env["MLX_SLM_BLAS"] = "off"
    done = subprocess.run(
        [sys.executable, "-c", WORKER, engine, str(model_dir), str(prompt), str(tokens)],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="270M")
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()

    import mlx.core as mx

    from mlx_slm.synthetic import published_config, write_hub_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_hub_checkpoint(Path(tmp) / "model", published_config(args.size))
        for engine in ("ours", "mlx-lm"):
            for blas in ("reference", "optimized"):
                result = run_worker(engine, model_dir, blas, args.prompt, args.tokens)
                rows.append({"engine": engine, "requested": blas, **result})
                print(rows[-1], file=sys.stderr)
    record = {
        "benchmark": "blas_effect",
        "date": datetime.date.today().isoformat(),
        "backend": "cpu",
        "mlx_version": mx.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores",
        "shape": args.size,
        "dtype": "float32",
        "prompt_tokens": args.prompt,
        "generated_tokens": args.tokens,
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"blas_effect-{record['date']}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print("| engine | BLAS | prompt tok/s | decode tok/s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['engine']} | {row['blas'].split(' ')[0]} | {row['prompt_tps']:.1f} | "
              f"{row['generation_tps']:.2f} |")
    print(f"\n{args.size} shape, float32, prompt {args.prompt}, {args.tokens} tokens, CPU backend, "
          f"MLX {mx.__version__}, {record['date']}; saved {out}")


if __name__ == "__main__":
    main()
