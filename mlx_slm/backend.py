"""Backend-specific execution: the one place where the CPU backend gets its own formulations.

Metal and CUDA run the model as written in model.py: MLX's fused kernels (fast.rope,
fast.rms_norm, scaled_dot_product_attention, quantized_matmul) are what those backends are
fastest at. On the CPU backend the same calls are composites of many small primitives,
and half-precision and quantized matmuls are single-threaded loops (float32 goes to BLAS).
`prepare` therefore swaps in subclasses with the same parameters and CPU-friendly
forwards; weights, names and saved files are unchanged. Measurements: design.md and
benchmarks/.
"""

import mlx.core as mx
import mlx.nn as nn

from mlx_slm.cpu_ops import (
    HALF,
    grouped_attention,
    half_linear,
    quantized_linear,
    rope_tables,
    rotation,
)
from mlx_slm.model import Attention, Model
from mlx_slm.stats import backend


def prepare(model: nn.Module, device_backend: str | None = None) -> nn.Module:
    """Swap in the CPU formulations when running on the CPU backend; returns `model`.

    Call it after the weights are final (the loader does): it precomputes per-layer
    constants from them.
    """
    if (device_backend or backend()) != "cpu":
        return model
    positions = max(4096, getattr(getattr(model, "args", None), "max_context_length", 0))
    if _quantized_with_half_scales(model):
        # Quantized layers compute in float32 here anyway; float32 activations spare two
        # conversions per matmul and the slow half-precision elementwise code.
        for _, module in model.named_modules():
            if isinstance(module, nn.RMSNorm):
                module.weight = module.weight.astype(mx.float32)
        object.__setattr__(model, "_activations", mx.float32)
    for _, module in model.named_modules():
        swap = _CPU_CLASSES.get(type(module))
        if swap is not None:
            module.__class__ = swap
            module.prepare_cpu(positions)
    return model


def _quantized_with_half_scales(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
               and m.scales.dtype in HALF for _, m in model.named_modules())


def transposed(module: nn.Module) -> mx.array:
    """`module.weight.T`, made once: a transpose per call is one more graph node per step.

    Remade whenever the weight array is replaced (the cached view keeps its source).
    """
    cached = vars(module).get("_weight_t")
    if cached is None or cached[0] is not module.weight:
        view = module.weight.T
        mx.eval(view)
        cached = (module.weight, view)
        object.__setattr__(module, "_weight_t", cached)
    return cached[1]


class CpuLinear(nn.Linear):
    def prepare_cpu(self, positions: int):
        pass

    def __call__(self, x):
        y = half_linear(x, self.weight) if self.weight.dtype in HALF else x @ transposed(self)
        return y + self.bias if "bias" in self else y


class CpuEmbedding(nn.Embedding):
    def prepare_cpu(self, positions: int):
        pass

    def as_linear(self, x):
        if self.weight.dtype in HALF:
            return half_linear(x, self.weight)
        return x @ transposed(self)


class CpuQuantizedLinear(nn.QuantizedLinear):
    def prepare_cpu(self, positions: int):
        pass

    def __call__(self, x):
        y = quantized_linear(x, self["weight"], self["scales"], self["biases"],
                             self.group_size, self.bits, self.mode)
        return y + self["bias"] if "bias" in self else y


class CpuQuantizedEmbedding(nn.QuantizedEmbedding):
    def prepare_cpu(self, positions: int):
        pass

    def as_linear(self, x):
        return quantized_linear(x, self["weight"], self["scales"], self["biases"],
                                self.group_size, self.bits, self.mode)


class CpuAttention(Attention):
    """Attention with fewer primitives: q and k normed and rotated together, RoPE from a
    table of cos/sin by position, and explicit grouped-query attention."""

    def prepare_cpu(self, positions: int):
        n_q, n_kv = self.n_heads, self.n_kv_heads
        if "q_norm" in self:
            self._qk_norm = mx.concatenate([
                mx.broadcast_to(self.q_norm.weight, (n_q, self.head_dim)),
                mx.broadcast_to(self.k_norm.weight, (n_kv, self.head_dim)),
            ])[:, None, :]
        self._cos, self._sin = rope_tables(self.head_dim, self.rope_base, positions)

    def __call__(self, x: mx.array, mask, cache=None) -> mx.array:
        *batch, L, _ = x.shape  # [B, L, D], or [L, D] for one sequence (see CpuModel)
        B = batch[0] if batch else 1
        n_q, n_kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        # [B, L, heads*hd] -> [B, heads, L, hd]; rows of qkv_proj are all Q, then K, then V.
        qkv = self.qkv_proj(x)
        if L == 1:  # one position: the head-major layout is a plain reshape
            qkv = qkv.reshape(B, -1, 1, hd)
        else:
            qkv = qkv.reshape(B, L, -1, hd).transpose(0, 2, 1, 3)
        qk, values = mx.split(qkv, [n_q + n_kv], axis=1)
        if "q_norm" in self:
            qk = mx.fast.rms_norm(qk, None, self.q_norm.eps) * self._qk_norm
        offset = cache.offset if cache is not None else 0
        # Attention runs in float32 (BLAS); the cache keeps float32 keys and values, since
        # upcasting a half-precision cache every step would cost more than it saves.
        qk = self._rotate(qk.astype(mx.float32), offset, L)
        queries, keys = mx.split(qk, [n_q], axis=1)
        queries = queries * self.scale
        values = values.astype(mx.float32)
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        out = grouped_attention(queries, keys, values, mask).astype(x.dtype)
        if L > 1:
            out = out.transpose(0, 2, 1, 3)
        return self.out_proj(out.reshape(*batch, L, -1))

    def _rotate(self, x: mx.array, offset, length: int) -> mx.array:
        """Half-split (NeoX) RoPE at positions offset .. offset+length-1."""
        cos, sin = rotation(self._cos, self._sin, offset, length)
        x1, x2 = mx.split(x, 2, axis=-1)
        return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class CpuModel(Model):
    """One sequence runs as [L, D] through the blocks: a [1, L, D] input makes every
    matmul flatten and unflatten it, two more graph nodes per matmul per step. Quantized
    models run float32 activations (see `prepare`)."""

    def prepare_cpu(self, positions: int):
        pass

    def hidden(self, inputs: mx.array, cache=None, mask=None) -> mx.array:
        one = inputs.shape[0] == 1
        h = self.transformer.token_embeddings(inputs[0] if one else inputs)
        activations = vars(self).get("_activations")
        if activations is not None:
            h = h.astype(activations)
        if mask is None and inputs.shape[1] > 1:
            mask = "causal"
        for i, layer in enumerate(self.layers):
            h = layer(h, mask, cache[i] if cache is not None else None)
        h = self.transformer.norm(h)
        return h[None] if one else h


_CPU_CLASSES = {
    Model: CpuModel,
    Attention: CpuAttention,
    nn.Linear: CpuLinear,
    nn.Embedding: CpuEmbedding,
    nn.QuantizedLinear: CpuQuantizedLinear,
    nn.QuantizedEmbedding: CpuQuantizedEmbedding,
}
