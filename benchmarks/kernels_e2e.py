"""End-to-end decode and prompt speed with the native CPU kernels on and off, side by side.

Synthetic weights at the real OpenELM shapes, built in memory (nothing written to disk);
each (size, precision) runs in two fresh interpreters, MLX_SLM_KERNELS=on then off, one
right after the other, so both see the same machine load. Greedy decoding, EOS ignored,
the generation clock starting after the first token, one untimed warm-up run.

    python benchmarks/kernels_e2e.py [-s 270M -s 1.1B] [-P 4bit ...] [-p 128] [-n 64]

Writes benchmarks/results/kernels_e2e-<date>.json.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def child(size: str, precision_name: str, prompt_tokens: int, gen_tokens: int) -> dict:
    """Builds one model and times it (runs in the interpreter the parent starts)."""
    import mlx_slm  # noqa: F401  (puts the optimized BLAS under MLX: before mlx.core)

    # isort: split
    import mlx.core as mx

    from mlx_slm.bench.machine import machine_info
    from mlx_slm.bench.precisions import model_at, precision
    from mlx_slm.cpu.layers import prepare
    from mlx_slm.generation import generate_tokens
    from mlx_slm.synthetic import published_config, random_weights

    config = published_config(size)
    model, _ = model_at(config, random_weights(config, 0), precision(precision_name, config),
                        size)
    mx.eval(model.parameters())
    prepare(model)
    prompt = [int(t) for t in mx.random.randint(3, 30000, (prompt_tokens,), key=mx.random.key(1))]

    def run(n):
        start = time.perf_counter()
        first = None
        for i, _ in enumerate(generate_tokens(model, prompt, max_tokens=n)):
            if i == 0:
                first = time.perf_counter()
        end = time.perf_counter()
        return first - start, (n - 1) / (end - first)

    run(8)  # warm-up: compiles, touches every weight
    ttft, decode_tps = run(gen_tokens)
    return {**machine_info(), "size": size, "precision": precision_name,
            "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
            "prompt_tps": prompt_tokens / ttft, "decode_tps": decode_tps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-s", "--size", action="append", help="270M, 1.1B, ... (repeatable)")
    parser.add_argument("-P", "--precision", action="append",
                        help="float32, bfloat16, 8bit, 4bit (repeatable)")
    parser.add_argument("-p", "--prompt-tokens", type=int, default=128)
    parser.add_argument("-n", "--gen-tokens", type=int, default=64)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, name, p, n = args.child
        print(json.dumps(child(size, name, int(p), int(n))))
        return
    rows = []
    for size in args.size or ["270M", "1.1B"]:
        for name in args.precision or ["float32", "bfloat16", "8bit", "4bit"]:
            pair = {}
            for mode in ("on", "off"):
                done = subprocess.run(
                    [sys.executable, __file__, "--child", size, name,
                     str(args.prompt_tokens), str(args.gen_tokens)],
                    env={**os.environ, "MLX_SLM_KERNELS": mode}, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"Error: {size} {name} kernels {mode}: {done.stderr.strip()[-500:]}")
                pair[mode] = json.loads(done.stdout)
            on, off = pair["on"], pair["off"]
            if not rows:
                print(f"backend {on['backend']} | BLAS {on['blas']} | {on['cpu']} "
                      f"({on['cores']} cores) | mlx {on['mlx_version']} | prompt "
                      f"{args.prompt_tokens}, {args.gen_tokens} generated | {on['date']}")
                print(f"{'size':5} {'precision':9} {'decode on':>9} {'off':>6} {'ratio':>6} "
                      f"{'prompt on':>9} {'off':>6} {'ratio':>6}  kernels")
            row = {"size": size, "precision": name, "on": on, "off": off,
                   "decode_ratio": on["decode_tps"] / off["decode_tps"],
                   "prompt_ratio": on["prompt_tps"] / off["prompt_tps"]}
            rows.append(row)
            print(f"{size:5} {name:9} {on['decode_tps']:>9.1f} {off['decode_tps']:>6.1f} "
                  f"{row['decode_ratio']:>5.2f}x {on['prompt_tps']:>9.1f} "
                  f"{off['prompt_tps']:>6.1f} {row['prompt_ratio']:>5.2f}x  {on['kernels']}",
                  flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"kernels_e2e-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
