"""Structured output's cost: constrained decode speed against unconstrained, in the same run.

On a seeded synthetic model at the 270M shape (float32), greedy decoding of a ten-field
JSON schema, and the same number of unconstrained tokens (EOS ignored), alternately
(A B A B ...); the ratio is taken pair by pair, since these machines are noisy. Also: the
grammar start-up for that schema (compile + matchers + first mask, target <= 50 ms), the
host cost of the mask and of advancing the grammar per token, and the one-off vocabulary
description per tokenizer. Writes benchmarks/results/constrained-<date>.json.

    python benchmarks/constrained.py [--pairs 4] [--startup-runs 20]
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# isort: off
import mlx_slm  # noqa: F401  (first: it puts the optimized BLAS under MLX's CPU backend)
import mlx.core as mx
# isort: on

import mlx_slm.constrain as constrain
from mlx_slm.bench.machine import machine_info
from mlx_slm.chooser import TokenChooser
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load, model_dtype
from mlx_slm.synthetic import published_config, write_hub_checkpoint

RESULTS = Path(__file__).parent / "results"
TOKENIZER = Path(__file__).parent.parent / "tests" / "data" / "llama2-tokenizer.model"
PROMPT = "Describe one customer of the shop as a JSON record:"

# Ten fields of the common kinds, strings bounded so a random model finishes.
SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999999},
        "name": {"type": "string", "maxLength": 16},
        "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "tier": {"enum": ["free", "plus", "pro"]},
        "balance": {"type": "number", "minimum": 0, "maximum": 10000},
        "country": {"type": "string", "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"], "additionalProperties": False,
        },
    },
    "required": ["id", "name", "email", "age", "member", "tier", "balance", "country", "tags",
                 "address"],
    "additionalProperties": False,
}


def timed_decode(model, prompt, constraint=None, **kwargs) -> tuple[list[int], float]:
    """Tokens, and the seconds from the first token to the last (the generation clock)."""
    tokens, first = [], None
    chooser = TokenChooser(history=prompt, constraint=constraint)
    for token in generate_tokens(model, prompt, chooser=chooser, **kwargs):
        now = time.perf_counter()
        first = first or now
        tokens.append(token)
    return tokens, now - first


class TimedConstraint(constrain.Constraint):
    """A constraint that records the host time of each mask and each accept."""

    def __init__(self, *args):
        super().__init__(*args)
        self.mask_s, self.accept_s = [], []

    def mask(self, width):
        start = time.perf_counter()
        out = super().mask(width)
        self.mask_s.append(time.perf_counter() - start)
        return out

    def accept(self, token):
        start = time.perf_counter()
        super().accept(token)
        self.accept_s.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--startup-runs", type=int, default=20)
    args = parser.parse_args()

    config = published_config("270M")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_hub_checkpoint(Path(tmp) / "model", config, seed=0)
        shutil.copy(TOKENIZER, model_dir / "tokenizer.model")
        model, tokenizer = load(model_dir, "float32")
    prompt = tokenizer.encode(PROMPT)

    start = time.perf_counter()
    vocab = constrain.GrammarVocabulary(tokenizer)
    vocabulary_s = time.perf_counter() - start

    startups = []
    for _ in range(args.startup_runs):
        start = time.perf_counter()
        constrain.Constraint(constrain.json_schema(SCHEMA), vocab).allowed()
        startups.append(time.perf_counter() - start)

    spec = constrain.json_schema(SCHEMA)
    eos = (tokenizer.eos_id,)
    # Warm-up (and compilation); greedy, so every constrained run gives these same tokens.
    tokens, _ = timed_decode(model, prompt, max_tokens=400, stop_ids=eos,
                             constraint=constrain.Constraint(spec, vocab))
    text = tokenizer.decode(tokens)
    json.loads(text)  # the output is valid JSON, or this benchmark is wrong
    n = len(tokens)
    timed_decode(model, prompt, max_tokens=8)
    pairs, masks, accepts = [], [], []
    for i in range(args.pairs):
        constraint = TimedConstraint(spec, vocab)
        runs = {
            "constrained": lambda c=constraint: timed_decode(
                model, prompt, max_tokens=400, stop_ids=eos, constraint=c),
            "plain": lambda: timed_decode(model, prompt, max_tokens=n),
        }
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]  # A B, then B A: drift cancels
        seconds = {name: runs[name]()[1] for name in order}
        constrained_tps, plain_tps = (n - 1) / seconds["constrained"], (n - 1) / seconds["plain"]
        pairs.append({"first": order[0], "constrained_tps": constrained_tps,
                      "unconstrained_tps": plain_tps, "ratio": constrained_tps / plain_tps})
        masks += constraint.mask_s[1:]  # the first is the start-up's
        accepts += constraint.accept_s
        print(pairs[-1], file=sys.stderr)

    def ms(values, q=None):
        values = sorted(values)
        return 1e3 * (values[int(q * (len(values) - 1))] if q else statistics.median(values))

    record = {
        "benchmark": "constrained",
        **machine_info(),  # "date" is the UTC time of the run
        "load_average_1_5_15": os.getloadavg(),  # other work on the machine inflates noise
        "engine": f"llguidance {constrain.llguidance.__version__}",
        "shape": "OpenELM-270M (synthetic weights, seed 0)",
        "dtype": model_dtype(model),
        "sampler": "greedy",
        "schema_fields": len(SCHEMA["properties"]),
        "tokens": n,
        "output": text,
        "vocabulary_s": vocabulary_s,
        "startup_ms_median": ms(startups),
        "startup_ms_max": 1e3 * max(startups),
        "mask_ms_median": ms(masks),
        "mask_ms_p95": ms(masks, 0.95),
        "accept_ms_median": ms(accepts),
        "pairs": pairs,
        "median_ratio": statistics.median(p["ratio"] for p in pairs),
        "median_constrained_tps": statistics.median(p["constrained_tps"] for p in pairs),
        "median_unconstrained_tps": statistics.median(p["unconstrained_tps"] for p in pairs),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"constrained-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['date']} | {record['backend']} backend ({record['blas']} BLAS) | "
          f"{record['cpu']}, {record['cores']} cores | {record['shape']}, {record['dtype']}, "
          f"greedy | {record['engine']}")
    print(f"decode: constrained {record['median_constrained_tps']:.2f} tok/s, unconstrained "
          f"{record['median_unconstrained_tps']:.2f} tok/s, ratio {record['median_ratio']:.3f} "
          f"(median of {args.pairs} pairs of {n} tokens)")
    print(f"{record['schema_fields']}-field schema start-up {record['startup_ms_median']:.1f} ms "
          f"(median of {args.startup_runs}, max {record['startup_ms_max']:.1f}); per token: "
          f"mask {record['mask_ms_median']:.3f} ms (p95 {record['mask_ms_p95']:.3f}), "
          f"accept {record['accept_ms_median']:.3f} ms; vocabulary (once per tokenizer) "
          f"{record['vocabulary_s']:.2f} s")
    print(f"saved {out}")
    mx.clear_cache()


if __name__ == "__main__":
    main()
