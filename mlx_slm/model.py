"""OpenELM in MLX: layer-wise scaled heads and FFN widths, GQA, per-head q/k norm, RoPE.

Module attribute names equal the Hub tensor names, so a checkpoint loads strictly as is.
"""

import dataclasses
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from mlx_slm.errors import SlmError


def make_divisible(value: float, divisor: int) -> int:
    """OpenELM's rounding of layer widths to a multiple of `divisor` (never down by >10%)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass
class ModelArgs:
    """The checkpoint's `config.json`, with its own key names."""

    model_type: str
    model_dim: int
    head_dim: int
    num_transformer_layers: int
    num_query_heads: list[int]
    num_kv_heads: list[int]
    ffn_multipliers: list[float]
    ffn_dim_divisor: int = 256
    vocab_size: int = 32000
    max_context_length: int = 2048
    rope_freq_constant: float = 10000.0
    normalize_qk_projections: bool = True
    share_input_output_layers: bool = True
    ffn_with_glu: bool = True
    rms_norm_eps: float = 1e-6
    bos_token_id: int = 1
    eos_token_id: int = 2
    extra: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        """Validate a config dict; unknown keys are kept in `extra`, not rejected."""
        if not isinstance(config, dict):
            raise SlmError("config.json must hold a JSON object.")
        model_type = config.get("model_type")
        if model_type != "openelm":
            raise SlmError(
                f"Unsupported model_type {model_type!r} in config.json: mlx-slm runs OpenELM "
                "checkpoints only (model_type 'openelm')."
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name in names and f.default is dataclasses.MISSING and f.name not in config
        ]
        if missing:
            raise SlmError(f"config.json lacks required key(s): {', '.join(missing)}.")
        known = {k: v for k, v in config.items() if k in names}
        args = cls(**known, extra={k: v for k, v in config.items() if k not in names})
        args._check()
        return args

    def _check(self) -> None:
        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SlmError(f"config.json: {name} must be a positive integer, got {value!r}.")

        for name in ("model_dim", "head_dim", "num_transformer_layers", "vocab_size",
                     "ffn_dim_divisor", "max_context_length"):
            positive_int(name)
        for name in ("num_query_heads", "num_kv_heads", "ffn_multipliers"):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != self.num_transformer_layers:
                raise SlmError(
                    f"config.json: {name} must be a list of {self.num_transformer_layers} "
                    f"values (one per layer), got {values!r:.80}."
                )
            kinds = (int, float) if name == "ffn_multipliers" else (int,)
            if any(isinstance(v, bool) or not isinstance(v, kinds) or v <= 0 for v in values):
                raise SlmError(f"config.json: {name} must hold positive numbers.")
        for i, (q, kv) in enumerate(zip(self.num_query_heads, self.num_kv_heads)):
            if q % kv:
                raise SlmError(
                    f"config.json: layer {i} has {q} query heads, not a multiple of its "
                    f"{kv} kv heads."
                )
        if not isinstance(self.rope_freq_constant, (int, float)) or self.rope_freq_constant <= 0:
            raise SlmError("config.json: rope_freq_constant must be a positive number.")

    def ffn_dim(self, layer: int) -> int:
        return make_divisible(self.ffn_multipliers[layer] * self.model_dim, self.ffn_dim_divisor)

    def to_config(self) -> dict:
        config = dataclasses.asdict(self)
        return {**config.pop("extra"), **config}


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.n_heads = args.num_query_heads[layer]
        self.n_kv_heads = args.num_kv_heads[layer]
        self.head_dim = head_dim = args.head_dim
        self.scale = head_dim**-0.5
        self.rope_base = args.rope_freq_constant
        self.qkv_proj = nn.Linear(
            args.model_dim, (self.n_heads + 2 * self.n_kv_heads) * head_dim, bias=False
        )
        self.out_proj = nn.Linear(self.n_heads * head_dim, args.model_dim, bias=False)
        if args.normalize_qk_projections:
            self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
            self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array, mask, cache=None) -> mx.array:
        B, L, _ = x.shape
        # [B, L, heads*hd] -> [B, heads, L, hd]; rows of qkv_proj are all Q, then K, then V.
        qkv = self.qkv_proj(x).reshape(B, L, -1, self.head_dim).transpose(0, 2, 1, 3)
        queries, keys, values = mx.split(
            qkv, [self.n_heads, self.n_heads + self.n_kv_heads], axis=1
        )
        if "q_norm" in self:
            queries = self.q_norm(queries)
            keys = self.k_norm(keys)
        offset = cache.offset if cache is not None else 0
        queries = mx.fast.rope(
            queries, self.head_dim, traditional=False, base=self.rope_base, scale=1.0,
            offset=offset,
        )
        keys = mx.fast.rope(
            keys, self.head_dim, traditional=False, base=self.rope_base, scale=1.0,
            offset=offset,
        )
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        # GQA without tiling: SDPA maps kv head j to query heads j*g .. j*g+g-1.
        out = mx.fast.scaled_dot_product_attention(
            queries, keys, values, scale=self.scale, mask=mask
        )
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.glu = args.ffn_with_glu
        hidden = args.ffn_dim(layer)
        self.proj_1 = nn.Linear(args.model_dim, (2 if self.glu else 1) * hidden, bias=False)
        self.proj_2 = nn.Linear(hidden, args.model_dim, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.proj_1(x)
        if self.glu:
            # The first half of proj_1's rows is the gate.
            gate, up = mx.split(x, 2, axis=-1)
            return self.proj_2(nn.silu(gate) * up)
        return self.proj_2(nn.silu(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(args.model_dim, eps=args.rms_norm_eps)
        self.attn = Attention(args, layer)
        self.ffn_norm = nn.RMSNorm(args.model_dim, eps=args.rms_norm_eps)
        self.ffn = FeedForward(args, layer)

    def __call__(self, x: mx.array, mask, cache=None) -> mx.array:
        h = x + self.attn(self.attn_norm(x), mask, cache)
        return h + self.ffn(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.token_embeddings = nn.Embedding(args.vocab_size, args.model_dim)
        self.layers = [TransformerBlock(args, i) for i in range(args.num_transformer_layers)]
        self.norm = nn.RMSNorm(args.model_dim, eps=args.rms_norm_eps)


class Model(nn.Module):
    """OpenELMForCausalLM: token ids [B, L] -> logits [B, L, vocab]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.transformer = Transformer(args)
        if not args.share_input_output_layers:
            self.lm_head = nn.Linear(args.model_dim, args.vocab_size, bias=False)

    @property
    def layers(self) -> list[TransformerBlock]:
        return self.transformer.layers

    def __call__(self, inputs: mx.array, cache=None, mask=None) -> mx.array:
        return self.logits(self.hidden(inputs, cache, mask))

    def hidden(self, inputs: mx.array, cache=None, mask=None) -> mx.array:
        """The final-normed hidden states, before the output projection.

        `mask` (boolean or additive, broadcastable to [B, heads, L, cached + L]) replaces the
        default: none for one query row, else causal aligned to the cache's end.
        """
        h = self.transformer.token_embeddings(inputs)
        if mask is None and inputs.shape[1] > 1:
            mask = "causal"
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache is not None else None)
        return self.transformer.norm(h)

    def logits(self, hidden: mx.array) -> mx.array:
        if "lm_head" in self:
            return self.lm_head(hidden)
        return self.transformer.token_embeddings.as_linear(hidden)
