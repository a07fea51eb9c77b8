"""The batcher's decode step against `generate`'s, in one process, alternately: what a
served stream's step, a join and a leave cost, and what batching pays.

Synthetic weights at a published shape. For each precision: ms per token of `generate`'s
compiled single-stream step (DecodeStep), ms per step of the batcher (BatchGenerator) at
1, 4 and 8 rows, and the cost of a row joining (prefill + copy into its slot) and leaving.
Rounds alternate the engines, so drift cancels in the ratios. Writes
benchmarks/results/batch_step-<size>-<date>.json with the CPU model and the load average.

    python benchmarks/batch_step.py [--size 270M] [--precisions float32 bfloat16 4bit]
"""

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (before mlx.core: it puts the optimized BLAS under MLX)

RESULTS = Path(__file__).parent / "results"
PROMPT = list(range(1, 65))


def build(size: str, precision: str):
    import mlx.core as mx

    from mlx_slm import quant
    from mlx_slm.cpu.layers import prepare
    from mlx_slm.loader import model_from_weights
    from mlx_slm.synthetic import published_config, random_weights

    config = published_config(size)
    model = model_from_weights(config, random_weights(config, seed=0), "synthetic")
    if precision == "4bit":
        quant.quantize(model, bits=4, group_size=64)
    elif precision != "float32":
        model.set_dtype(getattr(mx, precision))
    mx.eval(model.parameters())
    return prepare(model)


def generate_ms(model, tokens: int) -> float:
    """ms per token of generate's loop (greedy, compiled), after its first token."""
    from mlx_slm.generation import DecodeStep, generate_tokens

    step = DecodeStep(model)
    list(generate_tokens(model, PROMPT, max_tokens=4, step=step))  # trace
    times = [time.perf_counter() for _ in generate_tokens(model, PROMPT, max_tokens=tokens,
                                                          step=step)]
    return (times[-1] - times[0]) / (len(times) - 1) * 1e3


def batch_ms(model, rows: int, tokens: int) -> dict:
    """ms per step of the batcher with `rows` greedy rows (choosing included: the pipelined
    step overlaps it with the forward), and the ms a row's join and leave cost."""
    from mlx_slm.batch_generation import BatchGenerator, Row
    from mlx_slm.chooser import TokenChooser

    def row():
        return Row(list(PROMPT), TokenChooser(history=PROMPT), 10**6)

    generator = BatchGenerator(model)
    generator.join([row() for _ in range(rows)])
    for _ in range(4):  # trace
        generator.step()
    start = time.perf_counter()
    for _ in range(tokens):
        generator.step()
    step_s = (time.perf_counter() - start) / tokens
    joiner = row()
    start = time.perf_counter()
    generator.join([joiner])
    join_s = time.perf_counter() - start
    start = time.perf_counter()
    generator.leave(joiner)
    leave_s = time.perf_counter() - start
    return {"step_ms": step_s * 1e3, "join_ms": join_s * 1e3, "leave_ms": leave_s * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="270M")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "4bit"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from mlx_slm.bench.machine import machine_info

    report = {"benchmark": "batch_step", "size": args.size, "prompt_tokens": len(PROMPT),
              "tokens": args.tokens, "rounds": args.rounds, "load_average": os.getloadavg(),
              **machine_info(), "rows": []}
    for precision in args.precisions:
        model = build(args.size, precision)
        rounds = []
        for _ in range(args.rounds):
            one = {"generate_ms": generate_ms(model, args.tokens)}
            for rows in (1, 4, 8):
                one[f"batch{rows}"] = batch_ms(model, rows, args.tokens)
            rounds.append(one)
        med = statistics.median
        row = {"precision": precision,
               "generate_ms": med(r["generate_ms"] for r in rounds),
               # Single-stream speed through the batcher, as a share of generate's.
               "batch1_vs_generate": med(r["generate_ms"] / r["batch1"]["step_ms"]
                                         for r in rounds)}
        for rows in (1, 4, 8):
            key = f"batch{rows}"
            row[key] = {k: med(r[key][k] for r in rounds) for k in rounds[0][key]}
            # Aggregate tokens/s of `rows` rows over one stream's through generate.
            row[f"{key}_throughput_vs_generate"] = med(
                rows * r["generate_ms"] / r[key]["step_ms"] for r in rounds)
        report["rows"].append(row)
        print(json.dumps(row))
        del model
    report["load_average_after"] = os.getloadavg()
    date = datetime.date.today().isoformat()
    out = RESULTS / f"batch_step-{args.size}-{date}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
