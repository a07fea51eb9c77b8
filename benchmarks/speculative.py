"""Speculative decoding at the 1.1B shape: does a draft pay, and what does verification cost?

Synthetic weights (random models of different sizes do not agree with each other), so the
draft is a 4-bit copy of the target itself (self-drafting), which agrees partly. For the
float32 and bfloat16 target, in one run:
  - plain greedy decode tok/s vs speculative tok/s (adaptive K, and a fixed K);
  - one target pass over K+1 positions vs one decode step (the verification's cost);
  - a draft that never agrees (a 4-bit copy of a different-seed model): adaptive K must
    fall back so that it is never more than 5% slower than plain decoding.
Prints backend, BLAS, CPU, dtype, shape and date; writes
benchmarks/results/speculative-<size>-<date>.json.

    python benchmarks/speculative.py [--tokens 48] [--size 1.1B] [--dtypes float32 bfloat16]
        [--k 4] (also a fixed K for the self-draft) [--verify-k 4]
"""

import argparse
import json
import time
from pathlib import Path

import mlx_slm  # noqa: F401  (puts the optimized BLAS under mlx first)

RESULTS = Path(__file__).parent / "results"
PROMPT_TOKENS = 16


def build(config: dict, weights: dict, dtype: str, bits: int | None = None):
    """The model on this backend's formulation, optionally quantized (group size 64)."""
    import mlx.core as mx

    import mlx_slm.quant as quant
    from mlx_slm.cpu.layers import prepare
    from mlx_slm.loader import model_from_weights

    model = model_from_weights(config, weights, "synthetic", dtype)
    if bits is not None:
        quant.quantize(model, bits=bits)
    mx.eval(model.parameters())
    return prepare(model)


def decode_tps(tokens, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """Generation tok/s of one warm run (the clock starts at the first token) and its ids."""
    from mlx_slm.bench.timing import time_run

    list(tokens(prompt, 4))  # warm-up: traces and allocations
    ids = []
    timing = time_run((ids.append(t) or t for t in tokens(prompt, n)), len(prompt))
    return timing.generation_tps, ids


def verify_cost(model, prompt: list[int], k: int, reps: int = 5) -> dict:
    """Seconds of one decode step vs one pass over k+1 positions, on the same cache."""
    import mlx.core as mx

    from mlx_slm.cache import make_cache
    from mlx_slm.generation import DecodeStep, prefill

    cache, step = make_cache(model), DecodeStep(model)
    mx.eval(prefill(model, mx.array(prompt, mx.uint32), cache))
    one, many = mx.array([[5]], mx.uint32), mx.array([list(range(5, 6 + k))], mx.uint32)

    def timed(run, width):
        best = float("inf")
        for _ in range(reps + 1):  # the first call traces
            start = time.perf_counter()
            mx.eval(run())
            best = min(best, time.perf_counter() - start)
            for layer in cache:
                layer.trim(width)
        return best

    step_s = timed(lambda: step(one, cache), 1)
    verify_s = timed(lambda: model(many, cache), k + 1)
    return {"k": k, "step_s": step_s, "verify_s": verify_s, "ratio": verify_s / step_s}


def measure_dtype(config, weights, other_weights, dtype, prompt, args) -> dict:
    import gc

    import mlx.core as mx

    from mlx_slm.generation import DecodeStep, generate_tokens
    from mlx_slm.speculative import Draft

    target = build(config, weights, dtype)
    step = DecodeStep(target)

    def plain(p, n):
        return generate_tokens(target, p, max_tokens=n, step=step)

    plain_tps, plain_ids = decode_tps(plain, prompt, args.tokens)
    verify = verify_cost(target, prompt, args.verify_k)
    print(f"  {dtype}: plain decode {plain_tps:.2f} tok/s; one pass over K+1={args.verify_k + 1}"
          f" positions {verify['verify_s'] * 1e3:.0f} ms vs one decode step "
          f"{verify['step_s'] * 1e3:.0f} ms: {verify['ratio']:.2f}x", flush=True)
    result = {"dtype": dtype, "plain_tps": plain_tps, "verify": verify}
    for name, draft_weights in (("self 4-bit", weights), ("other-seed 4-bit", other_weights)):
        draft_model = build(config, draft_weights, dtype, bits=4)
        fixed = (args.k,) if args.k and name == "self 4-bit" else ()
        for k in (None, *fixed):
            draft = Draft(draft_model, num_draft_tokens=k)

            def speculative(p, n, draft=draft):
                return draft.generate_tokens(target, p, max_tokens=n, step=step)

            tps, ids = decode_tps(speculative, prompt, args.tokens)
            result.setdefault("drafts", []).append({
                "draft": name, "num_draft_tokens": k or "adaptive", "tps": tps,
                "speedup": tps / plain_tps, "same_tokens_as_plain": ids == plain_ids,
                **draft.stats.as_dict(),
            })
            print(f"  {dtype} {name} K={k or 'adaptive'}: {tps:.2f} tok/s "
                  f"({tps / plain_tps:.2f}x plain {plain_tps:.2f}), acceptance "
                  f"{draft.stats.acceptance_rate:.2f}", flush=True)
        del draft_model, draft
        gc.collect()
        mx.clear_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="tokens generated per run")
    parser.add_argument("--size", default="1.1B")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--k", type=int, default=None,
                        help="also measure the self-draft with this fixed K")
    parser.add_argument("--verify-k", type=int, default=4,
                        help="K of the verification-cost measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import random

    from mlx_slm.bench.machine import machine_info
    from mlx_slm.synthetic import published_config, random_weights

    machine = machine_info()
    config = published_config(args.size)
    print(f"speculative decoding, OpenELM-{args.size} shape (synthetic), {args.tokens} tokens | "
          f"{machine['backend']} backend, BLAS {machine['blas']} | {machine['cpu']}, "
          f"{machine['cores']} cores | MLX {machine['mlx_version']} | {machine['date']}",
          flush=True)
    rng = random.Random(args.seed)
    prompt = [1] + [rng.randrange(3, config["vocab_size"]) for _ in range(PROMPT_TOKENS - 1)]
    weights = random_weights(config, args.seed)
    other = random_weights(config, args.seed + 1)
    results = [measure_dtype(config, weights, other, dtype, prompt, args)
               for dtype in args.dtypes]
    print("\n| dtype | draft | K | tok/s | plain tok/s | speedup | acceptance | mean kept |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for d in r["drafts"]:
            print(f"| {r['dtype']} | {d['draft']} | {d['num_draft_tokens']} | {d['tps']:.2f} | "
                  f"{r['plain_tps']:.2f} | {d['speedup']:.2f}x | {d['acceptance_rate']:.2f} | "
                  f"{d['mean_accepted']:.2f} |")
    for r in results:
        v = r["verify"]
        print(f"{r['dtype']}: one pass over K+1={v['k'] + 1} positions {v['verify_s'] * 1e3:.0f} ms"
              f" vs one decode step {v['step_s'] * 1e3:.0f} ms: {v['ratio']:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"speculative-{args.size}-{machine['date'][:10]}.json"
    out.write_text(json.dumps({"machine": machine, "shape": args.size, "config": config,
                               "tokens": args.tokens, "prompt_tokens": PROMPT_TOKENS,
                               "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
