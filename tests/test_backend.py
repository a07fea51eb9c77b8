"""The CPU formulations (backend.py) against model.py's as-written path, on every format."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_slm.cpu.layers as backend
import mlx_slm.quant as quant
from mlx_slm.cache import make_cache
from mlx_slm.cpu import kernels
from mlx_slm.cpu.layers import CpuAttention
from mlx_slm.cpu.ops import grouped_attention, rope_tables
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model
from tests.reference import rope as reference_rope

PROMPT = [1, 450, 7483, 310, 8046, 338, 29871, 13, 31999, 42, 7, 450, 99, 5]


def logits_trace(model, steps=6):
    """Prompt logits (many rows) and per-token decode logits (one row) with a cache."""
    cache = make_cache(model)
    outputs = [model(mx.array([PROMPT]), cache)[0]]
    for t in range(steps):
        outputs.append(model(mx.array([[100 + 37 * t]]), cache)[0])
    return np.array(mx.concatenate(outputs).astype(mx.float32))


@pytest.fixture(params=["float", "int8"])
def activations(request):
    """Quantized formats run with float activations (exact up to the order of sums) and with
    int8 ones (kernels.quant_method; the default where the CPU has integer dot products)."""
    with kernels.int8_activations(request.param == "int8"):
        yield request.param


@pytest.mark.parametrize("fmt, tolerance", [
    ("float32", 1e-5), ("bfloat16", 0.03), ("float16", 0.01), ("q8", 1e-4), ("q4", 1e-4),
    ("q4-float16", 0.01), ("q8-bfloat16", 0.03),
])
def test_cpu_formulation_matches_model_as_written(hub_checkpoint, fmt, tolerance, activations):
    if fmt.startswith("q") and kernels.quant_method(int(fmt[1])) == "int8":
        # x rounded to int8 per block of 32: about 1/254 of each block's largest value.
        tolerance = max(tolerance, 0.02)
    bits, _, scale_dtype = fmt.partition("-")
    dtype = (scale_dtype or None) if fmt.startswith("q") else fmt

    def build(prepared):
        model, _ = load_model(hub_checkpoint, dtype, prepare=False)
        if fmt.startswith("q"):  # quantizes the loaded weights, without preparing
            quant.apply(model, {"bits": int(bits[1:]), "group_size": 32})
        if prepared:
            backend.prepare(model, "cpu")
        return model

    prepared, written = build(True), build(False)
    assert isinstance(prepared.layers[0].attn, CpuAttention)
    if scale_dtype:  # half-precision scales: the CPU path runs float32 activations
        assert prepared.transformer.norm.weight.dtype == mx.float32
        assert prepared.layers[0].attn.qkv_proj.scales.dtype == getattr(mx, scale_dtype)
    assert not isinstance(written.layers[0].attn, CpuAttention)
    want, got = logits_trace(written), logits_trace(prepared)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tolerance * scale
    assert (np.argmax(got, -1) == np.argmax(want, -1)).mean() > 0.9


def test_prepared_greedy_generation_equals_as_written(hub_checkpoint):
    prepared, _ = load_model(hub_checkpoint)
    written, _ = load_model(hub_checkpoint, prepare=False)
    assert (list(generate_tokens(prepared, PROMPT, max_tokens=12))
            == list(generate_tokens(written, PROMPT, max_tokens=12, compiled=False)))


def reference_attention(q, k, v, mask):
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0, mask=mask)


@pytest.mark.parametrize("L, S", [(5, 5), (3, 9), (1, 12)])
def test_grouped_attention_matches_sdpa(L, S):
    mx.random.seed(0)
    q = mx.random.normal((2, 8, L, 16))
    k, v = mx.random.normal((2, 2, S, 16)), mx.random.normal((2, 2, S, 16))
    for mask in ("causal", None, mx.arange(S) <= S - 2,
                 mx.random.uniform(shape=(2, 1, L, S)) > 0.3, mx.random.normal((L, S))):
        if isinstance(mask, str) and L == 1:
            continue
        np.testing.assert_allclose(np.array(grouped_attention(q, k, v, mask)),
                                   np.array(reference_attention(q, k, v, mask)), atol=1e-5)


def test_rope_tables_match_float64_rope_at_least_as_well_as_fast_rope():
    x = mx.random.normal((1, 3, 7, 64))
    cos, sin = rope_tables(64, 10000.0, 4096)
    for offset in (0, 5, 2040):
        positions = offset + mx.arange(7)
        c, s = cos[positions], sin[positions]
        ours = np.array(mx.concatenate([x[..., :32] * c - x[..., 32:] * s,
                                        x[..., 32:] * c + x[..., :32] * s], axis=-1))
        fast = np.array(mx.fast.rope(x, 64, traditional=False, base=10000.0, scale=1.0,
                                     offset=offset))
        exact = reference_rope(np.array(x, dtype=np.float64),
                               np.arange(offset, offset + 7, dtype=np.float64), 10000.0)
        assert np.abs(ours - exact).max() <= max(np.abs(fast - exact).max(), 1e-6)


def test_prepare_is_a_no_op_off_the_cpu_backend(hub_checkpoint):
    model, _ = load_model(hub_checkpoint, prepare=False)
    backend.prepare(model, "metal")
    assert type(model.layers[0].attn).__name__ == "Attention"
