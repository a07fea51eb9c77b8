"""kernels.qk_rope (the q/k norm, RoPE and query scale as one primitive) against the MLX ops
it replaces in CpuAttention, at every activation dtype, with and without the q/k norm, one
offset or one per row, contiguous and strided inputs."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.cpu import kernels
from mlx_slm.cpu.ops import rope_tables, rotation

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"kernels: {kernels.status()}")


def composite(qkv, norm, cos, sin, n_q, n_kv, eps, scale):
    """CpuAttention's MLX formulation (model.py's order of roundings)."""
    qk, values = mx.split(qkv, [n_q + n_kv], axis=1)
    if norm is not None:
        qk = mx.fast.rms_norm(qk, None, eps) * norm.astype(qkv.dtype)[:, None, :]
    x1, x2 = mx.split(qk.astype(mx.float32), 2, axis=-1)
    qk = mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    queries, keys = mx.split(qk, [n_q], axis=1)
    return queries * scale, keys, values.astype(mx.float32)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize("per_row", [False, True])
def test_qk_rope_equals_the_ops_it_replaces(dtype, with_norm, per_row):
    # Per-row offsets come with batched decoding: one position per row.
    B, n_q, n_kv, L, hd = 2, 4, 2, 1 if per_row else 3, 16
    cos_t, sin_t = rope_tables(hd, 10000.0, 64)
    offset = mx.array([5, 9]) if per_row else 7
    cos, sin = rotation(cos_t, sin_t, offset, L)
    # [B, L, heads, hd] transposed: the strided layout of a prompt chunk.
    qkv = mx.random.normal((B, L, n_q + 2 * n_kv, hd)).astype(dtype).transpose(0, 2, 1, 3)
    norm = (1 + 0.1 * mx.random.normal((n_q + n_kv, hd))).astype(dtype) if with_norm else None
    rows = norm.astype(mx.float32) if with_norm else None
    got = kernels.qk_rope(qkv, rows, cos, sin, n_q, n_kv, 1e-6, 0.25)
    want = composite(qkv, norm, cos, sin, n_q, n_kv, 1e-6, 0.25)
    for g, w in zip(got, want):
        assert g.dtype == mx.float32 and g.shape == w.shape
        # float32 sums of squares in another order: a few ulps, through the half rounding.
        tol = 1e-5 if dtype == mx.float32 else 2 ** -7
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=tol, atol=tol)


def test_qk_rope_rejects_mismatched_shapes():
    cos, sin = rotation(*rope_tables(16, 10000.0, 8), 0, 1)
    with pytest.raises(ValueError, match="n_q \\+ 2 n_kv"):
        kernels.qk_rope(mx.zeros((1, 5, 1, 16)), None, cos, sin, 4, 1, 1e-6, 1.0)
    with pytest.raises(ValueError, match="cos/sin"):
        kernels.qk_rope(mx.zeros((1, 6, 2, 16)), None, cos, sin, 4, 1, 1e-6, 1.0)
