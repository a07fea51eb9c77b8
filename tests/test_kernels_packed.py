"""Packed quantized weights (kernels.pack_quantized): the layout is a reordering that
unpacks exactly, the packed products meet a float64 reference and are batch-invariant, and
a prepared model packs its quantized layers (its embedding lookup included) and decodes as
the unpacked model does."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_slm.quant as quant
from mlx_slm.cpu import kernels, layers
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model
from tests.test_kernels import (
    FLOATS,
    assert_close,
    dequantize64,
    f64,
    int8_rounding_bound,
    quantized,
)

native = pytest.mark.skipif(not kernels.available(), reason=f"kernels: {kernels.status()}")


def test_packing_is_a_reordering_that_unpacks_exactly():
    wq, s, b = quantized(48, 256, 64, 4, mx.float16)
    packed = kernels.pack_quantized(wq, s, b)
    for a, p in zip((wq, s, b), packed):
        assert p.shape == a.shape and p.dtype == a.dtype
        # Tile t's column-major block: row r of the tile, column j at j * 16 + r.
        tile = np.array(a)[16:32]
        assert np.array_equal(np.array(p)[16:32].reshape(-1), tile.T.reshape(-1))
    assert all(mx.array_equal(a, u) for a, u in zip((wq, s, b),
                                                       kernels.unpack_quantized(*packed)))


def test_packed_rows_are_the_rows_of_the_unpacked_array():
    a = mx.arange(64 * 5).reshape(64, 5)
    ids = mx.array([[0, 17, 63], [15, 16, 31]])
    assert mx.array_equal(kernels.packed_rows(kernels.pack_quantized(a, a, a)[0], ids), a[ids])


@native
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("sdtype", FLOATS)
def test_packed_matches_float64(bits, group_size, sdtype, method):
    n, k = 48, 384
    wq, s, b = quantized(n, k, group_size, bits, sdtype)
    w64 = dequantize64(wq, s, b, group_size, bits)
    packed = kernels.pack_quantized(wq, s, b)
    for m, xdtype in [(1, mx.float32), (5, sdtype), (19, mx.bfloat16)]:
        x = mx.random.normal((m, k)).astype(xdtype)
        y = kernels.packed_quantized_matmul(x, *packed, group_size, bits)
        peer = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=group_size, bits=bits)
        assert y.dtype == peer.dtype and y.shape == peer.shape
        x64 = f64(x)
        assert_close(y, x64 @ w64.T, x64, w64, int8_rounding_bound(x64, wq, s, group_size, bits))


@native
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_packed_rows_are_batch_invariant(bits, method):
    wq, s, b = quantized(64, 352, 32, bits, mx.bfloat16)
    packed = kernels.pack_quantized(wq, s, b)
    x = mx.random.normal((16, 352))
    singles = [kernels.packed_quantized_matmul(x[i : i + 1], *packed, 32, bits)
               for i in range(16)]
    for m in range(2, 17):
        y = kernels.packed_quantized_matmul(x[:m], *packed, 32, bits)
        for i in range(m):
            assert mx.array_equal(y[i : i + 1], singles[i]), (m, i)


@native
def test_packed_needs_whole_tiles():
    wq, s, b = quantized(40, 256, 64, 4, mx.float32)
    assert not kernels.can_pack(wq, 64, 4) and kernels.can_pack(wq[:32], 64, 4)
    with pytest.raises(ValueError, match="whole tiles of 16 rows"):
        kernels.packed_quantized_matmul(mx.ones((1, 256)), wq, s, b, 64, 4)


def test_packed_off_the_native_kernels_unpacks_for_mlx():
    """On a GPU device, or without the extension, the packed arrays still give MLX's op."""
    wq, s, b = quantized(32, 256, 64, 4, mx.float32)
    x = mx.random.normal((2, 256))
    with mx.stream(mx.cpu):
        want = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=64, bits=4)
    unpacked = mx.quantized_matmul(x, *kernels.unpack_quantized(*kernels.pack_quantized(
        wq, s, b)), transpose=True, group_size=64, bits=4)
    assert mx.array_equal(unpacked, want)


PROMPT = [1, 450, 7483, 310, 8046, 338]


def assert_looks_up_and_decodes_as(model, plain):
    """The tied, packed embedding looks rows up as the unpacked one does, and the packed
    model decodes the same greedy tokens."""
    ids = mx.array([[0, 5, 17, 31999]])
    assert mx.array_equal(model.transformer.token_embeddings(ids),
                          plain.transformer.token_embeddings(ids))
    assert (list(generate_tokens(model, PROMPT, max_tokens=8))
            == list(generate_tokens(plain, PROMPT, max_tokens=8)))


def quantized_model(checkpoint, bits):
    model, _ = load_model(checkpoint, prepare=False)
    quant.apply(model, {"bits": bits, "group_size": 32})
    mx.eval(model.parameters())
    return model


@native
@pytest.mark.parametrize("bits", [4, 8])
def test_a_prepared_model_packs_and_decodes_as_unpacked(hub_checkpoint, bits):
    with kernels.int8_activations(False):  # exact: int8 activations round x (tested above)
        check_packed_model(hub_checkpoint, bits)


def check_packed_model(hub_checkpoint, bits):
    plain = quantized_model(hub_checkpoint, bits)
    model = layers.prepare(quantized_model(hub_checkpoint, bits), "cpu")
    quantized_layers = [m for _, m in model.named_modules()
                        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    assert quantized_layers and all(m.cpu.packed for m in quantized_layers)
    assert_looks_up_and_decodes_as(model, plain)
    prompt = PROMPT
    got = model(mx.array([prompt]))[0]
    want = plain(mx.array([prompt]))[0]
    assert mx.abs(got - want).max().item() <= 1e-4 * mx.abs(want).max().item()
    # Preparing again must not pack twice.
    layers.prepare(model, "cpu")
    assert mx.array_equal(model(mx.array([prompt]))[0], got)
    # Unpacking gives MLX's layout back, bit for bit.
    layers.unpack(model)
    assert not any(m.cpu.packed for m in quantized_layers)
    for (name, a), (_, b) in zip(tree_flatten(model.parameters()),
                                 tree_flatten(plain.parameters())):
        assert a.dtype == b.dtype and mx.array_equal(a, b), name


@native
@pytest.mark.parametrize("wdtype", FLOATS)
def test_packed_dense_matches_float64_and_is_batch_invariant(wdtype):
    n, k = 48, 203 if wdtype != mx.bfloat16 else 202  # K's tail past the chains
    w = mx.random.normal((n, k)).astype(wdtype)
    packed = kernels.pack_dense(w)
    assert kernels.can_pack_dense(w) and not kernels.can_pack_dense(w[:40])
    ids = mx.array([3, 47])
    assert mx.array_equal(kernels.packed_dense_rows(packed, ids), w[ids])
    assert mx.array_equal(kernels.unpack_dense(packed), w)
    w64 = f64(w)
    # bfloat16 x meets bfloat16 weights in vdpbf16ps where the CPU has AVX512-BF16.
    for xdtype in (mx.float32, mx.bfloat16):
        x = mx.random.normal((19, k)).astype(xdtype)
        y = kernels.packed_matmul_t(x, packed)
        assert y.dtype == (x @ w.T).dtype
        assert_close(y, f64(x) @ w64.T, f64(x), w64)
        singles = [kernels.packed_matmul_t(x[i : i + 1], packed) for i in range(19)]
        for m in (2, 5, 16, 19):
            y = kernels.packed_matmul_t(x[:m], packed)
            assert all(mx.array_equal(y[i : i + 1], singles[i]) for i in range(m)), m


@native
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_prepared_float_model_packs_and_decodes_as_written(hub_checkpoint, dtype):
    plain, _ = load_model(hub_checkpoint, dtype, prepare=False)
    model = layers.prepare(load_model(hub_checkpoint, dtype, prepare=False)[0], "cpu")
    dense = [m for _, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert dense and all(m.cpu.packed for m in dense)
    assert_looks_up_and_decodes_as(model, plain)
