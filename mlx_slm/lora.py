"""LoRA and DoRA adapters on the model's linear layers, and fusing them into the weights.

A LoRA layer keeps the base layer (nn.Linear, or nn.QuantizedLinear for QLoRA) frozen and
adds `scale * (x @ lora_a) @ lora_b`; DoRA also learns each output row's magnitude `m`.
Attribute names equal mlx-lm's (`linear`, `lora_a`, `lora_b`, `m`), so adapter tensors are
named `transformer.layers.K.attn.qkv_proj.lora_a` in both tools and files move between them.
"""

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlx_slm.errors import SlmError

# Module paths inside a block, as mlx-lm's `keys` names them.
TARGETS = {"qkv_proj": "attn.qkv_proj", "out_proj": "attn.out_proj",
           "proj_1": "ffn.proj_1", "proj_2": "ffn.proj_2"}
ADAPTER_LEAVES = ("lora_a", "lora_b", "m")


@dataclass(frozen=True)
class LoRAOptions:
    """Which layers get adapters and their shape. Defaults are mlx-lm's (rank 8, scale 20,
    no dropout, every linear layer of every block); `num_layers` counts from the last."""

    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    targets: tuple[str, ...] = tuple(TARGETS)
    num_layers: int | None = None
    dora: bool = False

    def check(self, total_layers: int) -> None:
        if self.rank < 1:
            raise SlmError(f"LoRA rank must be at least 1, got {self.rank}.")
        if not 0.0 <= self.dropout < 1.0:
            raise SlmError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise SlmError(f"Unknown LoRA target {unknown[0] if unknown else '(none)'!r}: "
                           f"choose from {', '.join(TARGETS)}.")
        if self.num_layers is not None and not 1 <= self.num_layers <= total_layers:
            raise SlmError(f"The model has {total_layers} blocks; --num-layers must be 1 to "
                           f"{total_layers}, got {self.num_layers}.")


def _dequantized(linear: nn.Module) -> mx.array:
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.biases,
                             group_size=linear.group_size, bits=linear.bits, mode=linear.mode)
    return linear.weight


def _input_dims(linear: nn.Module) -> int:
    width = linear.weight.shape[1]
    return width * 32 // linear.bits if isinstance(linear, nn.QuantizedLinear) else width


class LoRALinear(nn.Module):
    """y = linear(x) + scale * (dropout(x) @ lora_a) @ lora_b; lora_b starts at zero, so a
    fresh adapter changes nothing."""

    def __init__(self, linear: nn.Module, rank: int, scale: float, dropout: float = 0.0):
        super().__init__()
        in_dims, out_dims = _input_dims(linear), linear.weight.shape[0]
        self.linear = linear
        self.dropout = nn.Dropout(p=dropout)
        self.scale = scale
        bound = 1 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (in_dims, rank))
        self.lora_b = mx.zeros((rank, out_dims))

    def delta(self) -> mx.array:
        """The update to the base weight, [out, in] like nn.Linear's weight, in float32."""
        return (self.scale * self.lora_b.T) @ self.lora_a.T

    def __call__(self, x: mx.array) -> mx.array:
        # The low-rank path runs in the adapter's float32 even on a half-precision base.
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        return self.linear(x) + (self.scale * z).astype(x.dtype)

    def fused_weight(self) -> mx.array:
        weight = _dequantized(self.linear)
        return (weight.astype(mx.float32) + self.delta()).astype(weight.dtype)


class DoRALinear(LoRALinear):
    """LoRA whose output rows are rescaled to a learned magnitude `m` (initially each base
    row's norm); the norm of the adapted weight is treated as a constant in the gradient,
    as the DoRA paper and mlx-lm do, which saves memory."""

    def __init__(self, linear: nn.Module, rank: int, scale: float, dropout: float = 0.0):
        super().__init__(linear, rank, scale, dropout)
        self.m = mx.linalg.norm(_dequantized(linear).astype(mx.float32), axis=1)

    def _adapted(self) -> mx.array:
        return _dequantized(self.linear).astype(mx.float32) + self.delta()

    def __call__(self, x: mx.array) -> mx.array:
        out = super().__call__(x)
        norm = mx.stop_gradient(mx.linalg.norm(self._adapted(), axis=1))
        return (self.m / norm).astype(x.dtype) * out

    def fused_weight(self) -> mx.array:
        adapted = self._adapted()
        weight = (self.m / mx.linalg.norm(adapted, axis=1))[:, None] * adapted
        return weight.astype(_dequantized(self.linear).dtype)


def target_paths(model: nn.Module, options: LoRAOptions) -> list[str]:
    """The module paths that get adapters, e.g. 'transformer.layers.2.attn.qkv_proj'."""
    total = len(model.layers)
    options.check(total)
    first = total - (options.num_layers or total)
    return [f"transformer.layers.{i}.{TARGETS[t]}" for i in range(first, total)
            for t in options.targets]


def apply(model: nn.Module, options: LoRAOptions) -> None:
    """Freeze the model and wrap the chosen layers with fresh adapters (the only trainable
    parameters). mx.random decides lora_a's initial values: seed it first."""
    modules = dict(model.named_modules())
    model.freeze()
    layer = DoRALinear if options.dora else LoRALinear
    swaps = [(path, layer(modules[path], options.rank, options.scale, options.dropout))
             for path in target_paths(model, options)]
    model.update_modules(tree_unflatten(swaps))


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The adapter tensors by their full names (what adapters.safetensors holds)."""
    return {name: value for name, value in tree_flatten(model.parameters())
            if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES}


def load_adapter_weights(model: nn.Module, weights: dict[str, mx.array], where) -> None:
    """Set adapter tensors after `apply`; every one must exist with its shape, and every
    adapter of the model must be given (a missing one would silently stay at its start)."""
    expected = adapter_weights(model)
    for name, value in weights.items():
        if name not in expected:
            raise SlmError(f"{where}: tensor {name} is not an adapter of this model; the "
                           "adapter was made for another model or other target layers.")
        if tuple(value.shape) != tuple(expected[name].shape):
            raise SlmError(f"{where}: tensor {name} has shape {tuple(value.shape)}, this "
                           f"model needs {tuple(expected[name].shape)}; the adapter was made "
                           "for another model.")
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise SlmError(f"{where}: adapter tensor {missing[0]} is missing.")
    model.load_weights(list(weights.items()), strict=False)


def fuse(model: nn.Module) -> None:
    """Merge every adapter into its base layer, in place. A quantized base comes out as a
    float nn.Linear in its scales' dtype (re-quantize with quant.quantize if wanted)."""
    fused = []
    for path, module in model.named_modules():
        if isinstance(module, LoRALinear):
            weight = module.fused_weight()
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight = weight
            fused.append((path, linear))
    model.update_modules(tree_unflatten(fused))
    model.unfreeze()
