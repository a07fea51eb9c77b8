"""Backend-specific execution: the one place where the CPU backend gets its own formulations.

Metal and CUDA run the model as written in model.py: MLX's fused kernels (fast.rope,
fast.rms_norm, scaled_dot_product_attention, quantized_matmul) are what those backends are
fastest at. On the CPU backend the same calls are composites of many small primitives,
and half-precision and quantized matmuls are single-threaded loops (float32 goes to BLAS).
`prepare` therefore swaps in subclasses with the same parameters and CPU-friendly
forwards; weights, names and saved files are unchanged. Measurements: benchmarks/README.md.

Precomputed constants live in a `CpuState` on the module that uses them: a plain object,
so they are neither parameters (saved, counted, compiled as inputs) nor hidden attributes.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_slm.backend import active_backend
from mlx_slm.cpu import kernels
from mlx_slm.cpu.ops import (
    HALF,
    float_linear,
    grouped_attention,
    half_linear,
    quantized_linear,
    rope_tables,
    rotation,
)
from mlx_slm.lora import DoRALinear
from mlx_slm.model import Attention, Model, TransformerBlock


@dataclass
class CpuState:
    """Arrays a CPU layer derives from its weights once, in `prepare`."""

    weight_t: mx.array | None = None  # a float32 weight's transpose (x @ W beats x @ W.T)
    qk_norm: mx.array | None = None  # q and k norm weights, one row per head
    qk_rows: mx.array | None = None  # the same as float32 [heads, head_dim] (kernels.qk_rope)
    cos: mx.array | None = None  # RoPE tables by position, shared by every layer
    sin: mx.array | None = None
    activations: mx.Dtype | None = None  # the dtype hidden states run in, if not the weights'
    packed: bool = False  # quantized weights packed for the native kernels (kernels.pack_quantized)


def prepare(model: nn.Module, device_backend: str | None = None) -> nn.Module:
    """Swap in the CPU formulations when running on the CPU backend; returns `model`.

    Call it after the weights are final (the loader does): it precomputes per-layer
    constants from them, and must be called again if they change.
    """
    if (device_backend or active_backend()) != "cpu":
        return model
    positions = max(4096, model.args.max_context_length)
    cos, sin = rope_tables(model.args.head_dim, model.args.rope_freq_constant, positions)
    activations = None
    if _quantized_with_half_scales(model):
        # Quantized layers compute in float32 here anyway; float32 activations spare two
        # conversions per matmul and the slow half-precision elementwise code.
        for _, module in model.named_modules():
            if isinstance(module, nn.RMSNorm):
                module.weight = module.weight.astype(mx.float32)
        activations = mx.float32
    # DoRA reads its base layer's weights in MLX's layout every step: those stay unpacked.
    dora = {id(m.linear) for _, m in model.named_modules() if isinstance(m, DoRALinear)}
    for _, module in model.named_modules():
        swap = _CPU_CLASSES.get(type(module))
        if swap is not None:
            module.__class__ = swap
        if isinstance(module, _PACKABLE):
            state = getattr(module, "cpu", None)
            if state is not None and state.packed:  # prepared before: never pack twice
                continue
            packed = id(module) not in dora and _pack(module)
            weight_t = None
            if not packed and "scales" not in module and module.weight.dtype not in HALF:
                weight_t = module.weight.T
                mx.eval(weight_t)
            module.cpu = CpuState(weight_t=weight_t, packed=packed)
        elif isinstance(module, CpuAttention):
            table = module.qk_norm_table()
            rows = None
            if table is not None:
                rows = table.reshape(-1, module.head_dim).astype(mx.float32)
                mx.eval(rows)
            module.cpu = CpuState(qk_norm=table, qk_rows=rows, cos=cos, sin=sin)
    model.cpu = CpuState(cos=cos, sin=sin, activations=activations)
    return model


def _pack(module: nn.Module) -> bool:
    """Reorder a layer's weights for the packed kernels, one layer at a time (the unpacked
    arrays are freed as each is replaced: no second copy of the model), if the native
    kernels run this format; whether it did. Packed layers use those kernels at every row
    count: their prompt products match float32 BLAS and beat upcasting half precision."""
    if not kernels.available():
        return False
    if "scales" not in module:
        if not kernels.can_pack_dense(module.weight):
            return False
        module.weight = kernels.pack_dense(module.weight)
        mx.eval(module.weight)
        return True
    if not (module.mode == "affine"
            and kernels.can_pack(module["weight"], module.group_size, module.bits)):
        return False
    packed = kernels.pack_quantized(module["weight"], module["scales"], module["biases"])
    mx.eval(packed)
    module["weight"], module["scales"], module["biases"] = packed
    return True


def unpack(model: nn.Module) -> nn.Module:
    """Put packed weights back in MLX's layout (for code that reads or replaces weights,
    such as quantizing a prepared model); `prepare` packs them again."""
    for _, module in model.named_modules():
        state = getattr(module, "cpu", None)
        if not (isinstance(module, _PACKABLE) and state is not None and state.packed):
            continue
        if "scales" in module:
            arrays = kernels.unpack_quantized(module["weight"], module["scales"],
                                              module["biases"])
            module["weight"], module["scales"], module["biases"] = arrays
        else:
            module.weight = kernels.unpack_dense(module.weight)
        mx.eval(module.parameters())
        weight_t = module.weight.T if module.weight.dtype == mx.float32 else None
        module.cpu = CpuState(weight_t=weight_t)
    return model


def _quantized_with_half_scales(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               and m.scales.dtype in HALF for _, m in model.named_modules())


def _dense_product(module, x):
    if module.cpu.packed:
        return kernels.packed_matmul_t(x, module.weight)
    if module.weight.dtype in HALF:
        return half_linear(x, module.weight)
    return float_linear(x, module.weight, module.cpu.weight_t)


class CpuLinear(nn.Linear):
    def __call__(self, x):
        y = _dense_product(self, x)
        return y + self.bias if "bias" in self else y


class CpuEmbedding(nn.Embedding):
    def __call__(self, x):
        if self.cpu.packed:
            return kernels.packed_dense_rows(self.weight, x)
        return super().__call__(x)

    def as_linear(self, x):
        return _dense_product(self, x)


class CpuQuantizedLinear(nn.QuantizedLinear):
    def __call__(self, x):
        y = quantized_linear(x, self["weight"], self["scales"], self["biases"],
                             self.group_size, self.bits, self.mode, self.cpu.packed)
        return y + self["bias"] if "bias" in self else y


class CpuQuantizedEmbedding(nn.QuantizedEmbedding):
    def __call__(self, x):
        if not self.cpu.packed:
            return super().__call__(x)
        w, s, b = (kernels.packed_rows(a, x) for a in (self["weight"], self["scales"],
                                                       self["biases"]))
        return mx.dequantize(w, s, b, group_size=self.group_size, bits=self.bits)

    def as_linear(self, x):
        return quantized_linear(x, self["weight"], self["scales"], self["biases"],
                                self.group_size, self.bits, self.mode, self.cpu.packed)


class CpuAttention(Attention):
    """Attention with fewer primitives: q and k normed and rotated together, RoPE from a
    table of cos/sin by position, and explicit grouped-query attention."""

    def qk_norm_table(self) -> mx.array | None:
        """The q and k norm weights as one [heads, 1, head_dim] table."""
        if "q_norm" not in self:
            return None
        return mx.concatenate([
            mx.broadcast_to(self.q_norm.weight, (self.n_heads, self.head_dim)),
            mx.broadcast_to(self.k_norm.weight, (self.n_kv_heads, self.head_dim)),
        ])[:, None, :]

    def __call__(self, x: mx.array, mask, cache=None, rot=None) -> mx.array:
        *batch, L, _ = x.shape  # [B, L, D], or [L, D] for one sequence (see CpuModel)
        B = batch[0] if batch else 1
        n_q, n_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        # [B, L, heads*hd] -> [B, heads, L, hd]; rows of qkv_proj are all Q, then K, then V.
        qkv = self.qkv_proj(x)
        if L == 1:  # one position: the head-major layout is a plain reshape
            qkv = qkv.reshape(B, -1, 1, hd)
        else:
            qkv = qkv.reshape(B, L, -1, hd).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        # Attention runs in float32 (BLAS); the cache keeps float32 keys and values, since
        # upcasting a half-precision cache every step would cost more than it saves.
        cos, sin = rot if rot is not None else rotation(self.cpu.cos, self.cpu.sin, offset, L)
        eps = self.q_norm.eps if "q_norm" in self else 0.0
        fused = kernels.qk_rope(qkv, self.cpu.qk_rows, cos, sin, n_q, n_kv, eps, self.scale)
        if fused is not None:  # one primitive for the ~16 below
            queries, keys, values = fused
        else:
            qk, values = mx.split(qkv, [n_q + n_kv], axis=1)
            if "q_norm" in self:
                qk = mx.fast.rms_norm(qk, None, self.q_norm.eps) * self.cpu.qk_norm
            x1, x2 = mx.split(qk.astype(mx.float32), 2, axis=-1)  # half-split (NeoX) RoPE
            qk = mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
            queries, keys = mx.split(qk, [n_q], axis=1)
            queries = queries * self.scale
            values = values.astype(mx.float32)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        out = grouped_attention(queries, keys, values, mask).astype(x.dtype)
        if L > 1:
            out = out.transpose(0, 2, 1, 3)
        return self.out_proj(out.reshape(*batch, L, -1))


class CpuBlock(TransformerBlock):
    """A block that passes the step's RoPE rotation, looked up once for every layer."""

    def __call__(self, x: mx.array, mask, cache=None, rot=None) -> mx.array:
        h = x + self.attn(self.attn_norm(x), mask, cache, rot)
        return h + self.ffn(self.ffn_norm(h))


class CpuModel(Model):
    """One sequence runs as [L, D] through the blocks: a [1, L, D] input makes every
    matmul flatten and unflatten it, two more graph nodes per matmul per step. Quantized
    models with half-precision scales run float32 activations (see `prepare`)."""

    def hidden(self, inputs: mx.array, cache=None, mask=None) -> mx.array:
        one = inputs.shape[0] == 1
        h = self.transformer.token_embeddings(inputs[0] if one else inputs)
        if self.cpu.activations is not None:
            h = h.astype(self.cpu.activations)
        if mask is None and inputs.shape[1] > 1:
            mask = "causal"
        offset = cache[0].offset if cache is not None else 0
        rot = rotation(self.cpu.cos, self.cpu.sin, offset, inputs.shape[1])
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache is not None else None, rot)
        h = self.transformer.norm(h)
        return h[None] if one else h


_PACKABLE = (CpuLinear, CpuEmbedding, CpuQuantizedLinear, CpuQuantizedEmbedding)

_CPU_CLASSES = {
    Model: CpuModel,
    TransformerBlock: CpuBlock,
    Attention: CpuAttention,
    nn.Linear: CpuLinear,
    nn.Embedding: CpuEmbedding,
    nn.QuantizedLinear: CpuQuantizedLinear,
    nn.QuantizedEmbedding: CpuQuantizedEmbedding,
}
