"""The native CPU kernels (mlx_slm.cpu.kernels) against MLX's own ops and a float64 numpy
reference. Tests that need the extension skip where it is not built (macOS); on Linux x86-64
with CI or MLX_SLM_REQUIRE_KERNELS set, a missing extension fails instead."""

import json
import os
import platform
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.cpu import kernels

native = pytest.mark.skipif(not kernels.available(), reason=f"kernels: {kernels.status()}")

FLOATS = [mx.float32, mx.float16, mx.bfloat16]
# Round-off of each output dtype (the products accumulate in float32 either way).
EPS = {mx.float32: 2.0**-23, mx.float16: 2.0**-10, mx.bfloat16: 2.0**-7}


def f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32), dtype=np.float64)


def unpack(w: mx.array, bits: int) -> np.ndarray:
    """MLX's packing, decoded independently: element i of a row sits at bits
    [bits * i, bits * (i + 1)) of the row's little-endian uint32 words."""
    raw = np.array(w).astype("<u4").view(np.uint8)
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    q = (raw[..., None] >> shifts) & ((1 << bits) - 1)
    return q.reshape(w.shape[0], -1).astype(np.float64)


def dequantize64(w, scales, biases, group_size, bits) -> np.ndarray:
    q = unpack(w, bits)
    n, k = q.shape
    s = np.repeat(f64(scales), group_size, axis=1)
    b = np.repeat(f64(biases), group_size, axis=1)
    return (q * s + b).reshape(n, k)


def int8_rounding_bound(x64: np.ndarray, w, scales, group_size, bits) -> np.ndarray:
    """The int8 path's documented error bound: x rounded to int8 per block of 32 meets the
    centred weights s * (q - 2^(bits-1)): sum_k |s (q_k - c)| * max|x_block| / 254."""
    if kernels.quant_method(bits) != "int8":  # the float path: no rounding of x
        return 0.0
    amax = np.repeat(np.abs(x64).reshape(len(x64), -1, 32).max(-1), 32, axis=1)
    centred = np.abs(unpack(w, bits) - 2 ** (bits - 1))
    centred *= np.repeat(np.abs(f64(scales)), group_size, axis=1)
    return (amax / 254) @ centred.T


def assert_close(y, ref, x64, w64, extra=0.0):
    """|y - ref| within float32 accumulation error plus the output dtype's rounding (plus
    `extra`, a path's own documented error)."""
    bound = np.abs(x64) @ np.abs(w64).T
    k = x64.shape[-1]
    tol = 4 * k * 2.0**-24 * bound + 2 * EPS[y.dtype] * (np.abs(ref) + extra) + extra + 1e-30
    err = np.abs(f64(y) - ref)
    assert np.all(err <= tol), f"max err {err.max():.3g}, worst ratio {(err / tol).max():.2f}"


def assert_near_peer(y, peer, x64, w64, extra=0.0):
    """y within MLX's own error: it may accumulate in the output's precision."""
    tol = 4 * EPS[y.dtype] * (np.abs(x64) @ np.abs(w64).T) + extra + 1e-30
    err = np.abs(f64(y) - f64(peer))
    assert np.all(err <= tol), f"max err {err.max():.3g}, worst ratio {(err / tol).max():.2f}"


def quantized(n, k, group_size, bits, dtype, seed=0):
    mx.random.seed(seed)
    w = mx.random.normal((n, k)) * 0.1
    wq, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    return wq, s.astype(dtype), b.astype(dtype)


def test_reference_unpacking_matches_mlx():
    wq, s, b = quantized(8, 256, 64, 4, mx.float32)
    np.testing.assert_allclose(
        dequantize64(wq, s, b, 64, 4), f64(mx.dequantize(wq, s, b, group_size=64, bits=4)),
        rtol=1e-6, atol=1e-7)


@native
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("sdtype", FLOATS)
def test_quantized_matches_mlx_and_float64(bits, group_size, sdtype, method):
    # Group 32 with K not a multiple of 64: AVX-512's 2-bit blocks of 64 leave a tail.
    n, k = 37, 352 if group_size == 32 else 384
    wq, s, b = quantized(n, k, group_size, bits, sdtype)
    w64 = dequantize64(wq, s, b, group_size, bits)
    for m, xdtype in [(1, mx.float32), (5, sdtype), (16, mx.float32), (19, mx.bfloat16)]:
        x = mx.random.normal((m, k)).astype(xdtype)
        y = kernels.quantized_matmul(x, wq, s, b, group_size, bits)
        peer = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=group_size, bits=bits)
        assert y.dtype == peer.dtype and y.shape == peer.shape
        x64 = f64(x)
        extra = int8_rounding_bound(x64, wq, s, group_size, bits)
        assert_close(y, x64 @ w64.T, x64, w64, extra)
        assert_near_peer(y, peer, x64, w64, extra)


@native
@pytest.mark.parametrize("precision", ["float32", "float16", "bfloat16", "q2", "q4", "q8"])
def test_rows_are_batch_invariant(precision, method):
    """Each row of a 2-16 row product is bit-identical to that row's one-row product, so
    batched and speculative decoding reproduce plain decoding exactly."""
    if precision.startswith("q"):
        bits, k = int(precision[1:]), 352
        wq, s, b = quantized(40, k, 32, bits, mx.bfloat16)

        def product(x):
            return kernels.quantized_matmul(x, wq, s, b, 32, bits)
    else:
        k = 203  # every tail of the dense loops
        w = mx.random.normal((40, k)).astype(getattr(mx, precision))

        def product(x):
            return kernels.matmul_t(x, w)
    x = mx.random.normal((16, k))
    singles = [product(x[i : i + 1]) for i in range(16)]
    for m in range(2, 17):
        y = product(x[:m])
        for i in range(m):
            assert mx.array_equal(y[i : i + 1], singles[i]), (m, i)


def attention64(q, k, v, causal, mask=None):
    """Grouped-query softmax attention in float64, the causal block aligned to the end."""
    q, k, v = f64(q), f64(k), f64(v)
    B, n_q, L, hd = q.shape
    S, groups = k.shape[2], n_q // k.shape[1]
    k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)
    scores = q @ k.swapaxes(-1, -2)
    if causal:
        scores = np.where(np.arange(S) <= np.arange(S - L, S)[:, None], scores, -np.inf)
    if mask is not None:
        scores = np.where(np.array(mask), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)) @ v


@native
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_float64_and_decoding_row_by_row(causal):
    B, n_kv, groups, L, S, hd = 2, 3, 4, 5, 37, 64
    q = mx.random.normal((B, n_kv * groups, L, hd)) * 0.3
    # Keys and values as a KV cache's slice: rows contiguous, strided along S and heads.
    cache = mx.random.normal((2, B, n_kv, 64, hd))
    k, v = cache[0, :, :, :S], cache[1, :, :, :S]
    y = kernels.attention(q, k, v, causal)
    ref = attention64(q, k, v, causal)
    assert y.shape == q.shape and np.abs(f64(y) - ref).max() < 1e-5
    if causal:  # position l alone, over its own keys, as one decoding step computes it
        for pos in range(L):
            keys = S - L + pos + 1
            one = kernels.attention(q[:, :, pos : pos + 1], k[:, :, :keys], v[:, :, :keys], False)
            assert mx.array_equal(one, y[:, :, pos : pos + 1]), pos


@native
@pytest.mark.parametrize("L", [1, 3])
def test_attention_with_padding_equals_each_row_alone(L):
    """A batch whose rows are left-padded to one length (the padding masked out) gives each
    row bit for bit what that row gets alone, unpadded."""
    B, n_kv, groups, S, hd = 3, 2, 4, 20, 64
    pads = [0, 3, 7]
    q = mx.random.normal((B, n_kv * groups, L, hd)) * 0.3
    k, v = mx.random.normal((B, n_kv, S, hd)), mx.random.normal((B, n_kv, S, hd))
    # Row b sees keys pads[b] .. and, within the block, the positions up to its own.
    causal = mx.arange(S)[None] <= mx.arange(S - L, S)[:, None]
    mask = (mx.arange(S)[None] >= mx.array(pads)[:, None])[:, None, None] & causal[None, None]
    y = kernels.attention(q, k, v, False, mask)
    assert np.abs(f64(y) - attention64(q, k, v, False, mask)).max() < 1e-5
    for b, pad in enumerate(pads):
        alone = kernels.attention(q[b : b + 1], k[b : b + 1, :, pad:], v[b : b + 1, :, pad:],
                                  L > 1)
        assert mx.array_equal(alone, y[b : b + 1]), b


@native
def test_quantized_strided_and_batched_inputs(method):
    k, gs, bits = 256, 64, 4
    wq, s, b = quantized(64, k, gs, bits, mx.bfloat16)
    # Every other row of the weights, scales and biases: strided, not row-contiguous.
    ws, ss, bs = wq[::2], s[::2], b[::2]
    w64 = dequantize64(ws, ss, bs, gs, bits)
    cases = [
        mx.random.normal((k, 3)).T,  # transposed
        mx.random.normal((4, 2 * k))[:, ::2],  # sliced
        mx.random.normal((2, 3, k)).astype(mx.float16),  # batched
        mx.broadcast_to(mx.random.normal((k,)), (3, k)),  # broadcast (stride 0)
    ]
    for x in cases:
        y = kernels.quantized_matmul(x, ws, ss, bs, gs, bits)
        x64 = f64(x).reshape(-1, k)
        assert y.shape == (*x.shape[:-1], 32)
        extra = int8_rounding_bound(x64, ws, ss, gs, bits)
        assert_close(y.reshape(-1, 32), x64 @ w64.T, x64, w64, extra)


@native
@pytest.mark.parametrize("wdtype", FLOATS)
def test_matmul_t_matches_mlx_and_float64(wdtype):
    for m, k, xdtype in [(1, 203, mx.float32), (5, 37, wdtype), (17, 130, mx.float32),
                         (9, 1000, mx.float16)]:
        w = mx.random.normal((45, k)).astype(wdtype)
        x = mx.random.normal((m, k)).astype(xdtype)
        y = kernels.matmul_t(x, w)
        peer = x @ w.T
        assert y.dtype == peer.dtype and y.shape == peer.shape
        x64, w64 = f64(x), f64(w)
        assert_close(y, x64 @ w64.T, x64, w64)
        assert_near_peer(y, peer, x64, w64)


@native
def test_matmul_t_strided_and_batched():
    big = mx.random.normal((40, 300)).astype(mx.bfloat16)
    w = big[::2, 7:207]  # strided rows and columns
    w64 = f64(w)
    for x in [mx.random.normal((200, 6)).T, mx.random.normal((2, 2, 200))]:
        y = kernels.matmul_t(x, w)
        x64 = f64(x).reshape(-1, 200)
        assert_close(y.reshape(-1, 20), x64 @ w64.T, x64, w64)


@native
def test_compiled_equals_eager():
    wq, s, b = quantized(48, 128, 32, 8, mx.float16)
    wd = mx.random.normal((48, 128)).astype(mx.bfloat16)
    mx.eval(wq, s, b, wd)  # evaluated before mx.compile captures them

    def f(x):
        return kernels.matmul_t(kernels.quantized_matmul(x, wq, s, b, 32, 8), wd.T)

    x = mx.random.normal((3, 128))
    assert mx.array_equal(mx.compile(f)(x), f(x))


@native
def test_thread_count_changes_nothing():
    wq, s, b = quantized(600, 512, 64, 4, mx.bfloat16)
    wd = mx.random.normal((600, 512)).astype(mx.float16)
    x = mx.random.normal((7, 512))
    results = []
    try:
        for n in (1, 3):
            kernels.set_threads(n)
            assert f" {n} threads" in kernels.status()
            results.append((kernels.quantized_matmul(x, wq, s, b, 64, 4), kernels.matmul_t(x, wd)))
            mx.eval(results[-1])
    finally:
        kernels.set_threads(os.cpu_count() or 1)
    # Each output column is computed by one thread with the same code: bitwise equal.
    assert all(mx.array_equal(a, b) for a, b in zip(*results))


def _run_isolated(env: dict, code: str) -> dict:
    """Runs `code` (which prints JSON) in a fresh interpreter with `env` added."""
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


_PROBE = """
import json, mlx.core as mx
from mlx_slm.cpu import kernels
mx.random.seed(1)
w = mx.random.normal((40, 256)); x = mx.random.normal((3, 256))
wq, s, b = mx.quantize(w, group_size=32, bits=4)
wh = w.astype(mx.bfloat16)
y = kernels.quantized_matmul(x, wq, s, b, 32, 4)
peer = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=32, bits=4)
print(json.dumps({"status": kernels.status(), "available": kernels.available(),
    "quant_err": mx.abs(y - peer).max().item(),
    "dense_err": mx.abs(kernels.matmul_t(x, wh) - x @ wh.T).max().item()}))
"""


def test_forced_off_falls_back_to_mlx():
    r = _run_isolated({"MLX_SLM_KERNELS": "off"}, _PROBE)
    assert r["status"] == "mlx (disabled by MLX_SLM_KERNELS=off)" and not r["available"]
    assert r["quant_err"] == 0 and r["dense_err"] == 0  # MLX's own ops, bit for bit


@native
def test_thread_env_and_portable_variant():
    r = _run_isolated({"MLX_SLM_THREADS": "3", "MLX_SLM_KERNELS_ISA": "generic"}, _PROBE)
    assert r["status"] == "native generic 3 threads"  # float path, no int8 rounding
    assert r["quant_err"] < 1e-4 and r["dense_err"] < 1e-2


@native
@pytest.mark.parametrize("isa", kernels.runnable_isas())
def test_every_runnable_variant_is_selectable(isa):
    r = _run_isolated({"MLX_SLM_KERNELS_ISA": isa, "MLX_SLM_KERNELS": "float"}, _PROBE)
    assert r["status"] == f"native {isa} {os.cpu_count()} threads"  # float activations
    assert r["quant_err"] < 1e-4 and r["dense_err"] < 1e-2
    # By default the variants with integer dot products round x to int8 (and say so).
    r = _run_isolated({"MLX_SLM_KERNELS_ISA": isa}, _PROBE)
    assert r["status"].endswith("int8 activations") == (isa != "generic")
    assert 0 < r["quant_err"] < 1.0 if isa != "generic" else r["quant_err"] < 1e-4  # |y| ~ 16


def test_unsupported_format_falls_back():
    wq, s, b = quantized(16, 192, 64, 6, mx.float32)
    x = mx.random.normal((2, 192))
    peer = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=64, bits=6)
    assert mx.array_equal(kernels.quantized_matmul(x, wq, s, b, 64, 6), peer)


def test_extension_built_where_required():
    required = os.environ.get("CI") or os.environ.get("MLX_SLM_REQUIRE_KERNELS")
    if not (required and sys.platform == "linux" and platform.machine() == "x86_64"):
        pytest.skip("the extension is required only on Linux x86-64 CI")
    if os.environ.get(kernels.SWITCH, "").lower() == "off":
        pytest.skip("kernels switched off")
    assert kernels.available(), kernels.status()
