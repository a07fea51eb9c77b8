"""Which OpenELM layers are sensitive to quantization? Evidence for the mixed recipes.

On a seeded synthetic model at a real shape (weights stored in float16, as converted models
are), quantize one group of layers at a time to low bits, everything else untouched, and
report the mean KL divergence of the next-token distribution from the float model's, top-1
agreement and perplexity on the built-in sample text. Then score whole-model plans (uniform
bit widths, the shipped recipes and a few alternatives) as bits per weight against KL.

Quantization here is simulated: each weight is replaced by dequantize(quantize(w)), exactly
the values a quantized layer multiplies by, and the model runs in float32 (fast on every
backend). Synthetic weights have no outlier structure, so only the relative picture carries
over to real weights, and even that with caution.

    python benchmarks/quant_sensitivity.py --size 270M --tokens 256 --bits 2,3
"""

import argparse
import datetime
import json
import math
import time
from pathlib import Path

# isort: off
import mlx_slm  # noqa: F401  (first: it puts the optimized BLAS under MLX's CPU backend)
import mlx.core as mx
from mlx.utils import tree_flatten
# isort: on

import mlx_slm.quant as quant
import mlx_slm.recipes as recipes
from mlx_slm.apps.quality import chunked_logits, position_metrics, sample_text
from mlx_slm.backend import active_backend
from mlx_slm.model import Model, ModelArgs
from mlx_slm.sizes import config_weight_bytes
from mlx_slm.synthetic import published_config, random_weights
from mlx_slm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
LAYER_KINDS = ("attn.qkv_proj", "attn.out_proj", "ffn.proj_1", "ffn.proj_2")


def candidate_rules(num_blocks: int) -> dict:
    """The shipped recipes, then alternatives not shipped: name -> rule(path, blocks)."""
    quarter = max(1, num_blocks // 4)

    def embedding(p, n):
        return p in recipes.EMBEDDING_PATHS

    def first_quarter(p, n):
        return recipes.block_index(p) is not None and recipes.block_index(p) < quarter

    def first_and_last(p, n):
        return recipes.block_index(p) in (0, n - 1)

    def attention(p, n):
        return p.endswith(("qkv_proj", "out_proj"))

    def union(*parts):
        return lambda p, n: any(part(p, n) for part in parts)

    alternatives = {  # the shipped recipes are: first_quarter, +embedding, +attention
        "embedding": embedding,
        "embedding+first_and_last": union(embedding, first_and_last),
        "attention": attention,
        "embedding+attention": union(embedding, attention),
        "first_quarter+attention": union(first_quarter, attention),
    }
    rules = {name: rule for name, (rule, _) in recipes.RECIPES.items()}
    rules.update({f"alt:{k}": v for k, v in alternatives.items()})
    return rules


class FakeQuantModel:
    """A float32 model whose layers can be swapped for their quantize-dequantize images."""

    def __init__(self, config: dict, seed: int, dtype: mx.Dtype):
        self.stored = random_weights(config, seed, dtype)  # as a converted directory holds them
        self.model = Model(ModelArgs.from_config(config))
        self.layers = {path: module for path, module in self.model.named_modules()
                       if hasattr(module, "to_quantized")}
        self.reset()

    def reset(self) -> None:
        self.model.load_weights([(k, v.astype(mx.float32)) for k, v in self.stored.items()])
        mx.eval(self.model.parameters())

    def quantize(self, settings: dict[str, dict]) -> None:
        """Replace each named layer's weight by dequantize(quantize(weight)) at its settings."""
        for path, s in settings.items():
            w = self.stored[f"{path}.weight"]
            packed = mx.quantize(w, s["group_size"], s["bits"])
            image = mx.dequantize(*packed, group_size=s["group_size"], bits=s["bits"])
            self.layers[path].weight = image.astype(mx.float32)
            mx.eval(self.layers[path].weight)

    def logits(self, inputs: list[int]) -> mx.array:
        pieces = list(chunked_logits(self.model, inputs))
        out = mx.concatenate(pieces, axis=0)
        mx.eval(out)
        return out


def measure(fq: FakeQuantModel, settings: dict, inputs, targets, base_logits) -> dict:
    fq.quantize(settings)
    logits = fq.logits(inputs)
    fq.reset()
    m = position_metrics(base_logits, targets, logits)
    return {
        "kl_mean": mx.mean(m["kl"]).item(),
        "top1_agreement": mx.mean(m["top1_agree"]).item(),
        "perplexity": math.exp(mx.mean(m["nll_quant"]).item()),
    }


def uniform(layers, bits, group_size) -> dict:
    return {p: {"group_size": group_size, "bits": bits} for p in layers}


def plan_settings(fq: FakeQuantModel, plan: dict) -> dict:
    return {p: s for p, m in fq.layers.items()
            if (s := quant.layer_settings(p, m, plan)) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="270M", help="published shape (270M, 450M, 1.1B, 3B)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of the sample text")
    parser.add_argument("--bits", default="2,3",
                        help="low widths for the one-group sweep ('' skips it)")
    parser.add_argument("--plan-bits", default="2,3,4",
                        help="base widths for the recipe plans")
    parser.add_argument("--uniform-bits", default="5,6,8",
                        help="further uniform widths to place on the size/KL curve")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=str(ROOT / "tests/data/llama2-tokenizer.model"))
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    args = parser.parse_args()

    config = published_config(args.size)
    fq = FakeQuantModel(config, args.seed, getattr(mx, args.dtype))
    num_blocks = config["num_transformer_layers"]
    tokenizer = Tokenizer(Path(args.tokenizer))
    ids = tokenizer.encode(sample_text(), bos=False)[: args.tokens]
    inputs, targets = [tokenizer.bos_id, *ids[:-1]], mx.array(ids)
    base_logits = fq.logits(inputs)
    params = sum(a.size for _, a in tree_flatten(fq.model.parameters()))
    gs = args.group_size
    start = time.perf_counter()

    groups = {"embedding/output": [p for p in fq.layers if p in recipes.EMBEDDING_PATHS]}
    for kind in LAYER_KINDS:
        groups[f"every {kind}"] = [p for p in fq.layers if p.endswith(kind)]
    for i in range(num_blocks):
        groups[f"block {i}"] = [p for p in fq.layers if recipes.block_index(p) == i]
    sweep = []
    for bits in (int(b) for b in args.bits.split(",") if b):
        for name, paths in groups.items():
            share = sum(fq.layers[p].weight.size for p in paths) / params
            row = {"group": name, "bits": bits, "weight_share": share,
                   **measure(fq, uniform(paths, bits, gs), inputs, targets, base_logits)}
            sweep.append(row)
            print(f"{bits}-bit {name:<22} share {share:6.1%}  KL {row['kl_mean']:.5f}  "
                  f"top-1 {row['top1_agreement']:.3f}", flush=True)

    plans = []
    rules = candidate_rules(num_blocks)
    for bits in (int(b) for b in args.plan_bits.split(",")):
        candidates = {"uniform": None, **rules}
        for name, rule in candidates.items():
            plan = {"group_size": gs, "bits": bits, "mode": "affine"}
            if rule is not None:
                high = {"group_size": gs, "bits": recipes.HIGHER_BITS[bits], "mode": "affine"}
                plan.update({p: dict(high) for p in fq.layers if rule(p, num_blocks)})
            bpw = 8 * config_weight_bytes({**config, "quantization": plan}) / params
            row = {"plan": name, "bits": bits, "bits_per_weight": bpw,
                   **measure(fq, plan_settings(fq, plan), inputs, targets, base_logits)}
            plans.append(row)
            print(f"plan {bits}-bit {name:<38} {bpw:5.2f} bits/weight  KL {row['kl_mean']:.5f}  "
                  f"top-1 {row['top1_agreement']:.3f}", flush=True)
    for bits in (int(b) for b in args.uniform_bits.split(",") if b):
        plan = {"group_size": gs, "bits": bits, "mode": "affine"}
        bpw = 8 * config_weight_bytes({**config, "quantization": plan}) / params
        row = {"plan": "uniform", "bits": bits, "bits_per_weight": bpw,
               **measure(fq, plan_settings(fq, plan), inputs, targets, base_logits)}
        plans.append(row)
        print(f"plan {bits}-bit uniform {bpw:5.2f} bits/weight  KL {row['kl_mean']:.5f}",
              flush=True)

    base_ppl = math.exp(mx.mean(position_metrics(base_logits, targets)["nll_base"]).item())
    result = {
        "size": args.size, "tokens": len(ids), "group_size": gs, "dtype": args.dtype,
        "seed": args.seed, "base_perplexity": base_ppl, "backend": active_backend(),
        "date": datetime.date.today().isoformat(), "seconds": time.perf_counter() - start,
        "weights": "synthetic (seeded N(0, 0.02))", "sweep": sweep, "plans": plans,
    }
    out = Path(args.out) if args.out else (
        ROOT / "benchmarks/results" / f"quant_sensitivity_{args.size}_{result['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
