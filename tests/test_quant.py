"""Quantization: the config format (mlx-lm's), recipes, validation, memory, and mlx-lm interop."""

import json
import math
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_slm.quant as quant
from mlx_slm.apps.quantize import quantize_directory
from mlx_slm.cpu import kernels
from mlx_slm.errors import SlmError
from mlx_slm.loader import build_model, load_model
from mlx_slm.model import Model, ModelArgs
from mlx_slm.recipes import HIGHER_BITS
from mlx_slm.sizes import config_weight_bytes, tensor_shapes
from mlx_slm.sizes import weight_bytes as header_bytes
from mlx_slm.synthetic import (
    published_config,
    tiny_config,
    write_hub_checkpoint,
)
from tests.conftest import LLAMA2_TOKENIZER

IDS = [1, 450, 73, 310, 846, 338, 299, 13, 999, 42, 7, 450]


@pytest.fixture(autouse=True)
def float_activations():
    """These tests compare formats and files, so products are exact: int8 activations
    (the CPU default; tested in test_kernels*.py) would round x."""
    with kernels.int8_activations(False):
        yield


def quantizable_config(num_layers: int = 4, **overrides) -> dict:
    """A tiny config whose every layer width is a multiple of 128 (all group sizes fit)."""
    shape = dict(model_dim=128, head_dim=32, query_heads=(4, 4, 8, 8), kv_heads=(1, 2, 2, 4),
                 ffn_multipliers=(0.5, 1.5, 2.5, 3.0), ffn_dim_divisor=128)
    return tiny_config(num_layers=num_layers, **{**shape, **overrides})


def make_model_dir(path, config=None, seed=1, dtype="float16"):
    """A converted-style model directory: weights in `dtype`, config, tokenizer."""
    out = write_hub_checkpoint(path, config or quantizable_config(), seed=seed, dtype=dtype)
    shutil.copy(LLAMA2_TOKENIZER, out / "tokenizer.model")
    return out


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """float16, with a 1000-token vocabulary: quantized float16 products are slow on CPU."""
    return make_model_dir(tmp_path_factory.mktemp("quant") / "base",
                          quantizable_config(vocab_size=1000))


def logits_of(model, ids=IDS):
    return np.array(model(mx.array([ids])).astype(mx.float32))


def test_quantize_writes_mlx_lm_format_and_swaps_every_layer():
    model = Model(ModelArgs.from_config(quantizable_config()))
    entry = quant.quantize(model, bits=4, group_size=64)
    assert entry == {"group_size": 64, "bits": 4, "mode": "affine"}
    layers = dict(model.named_modules())
    assert isinstance(layers["transformer.token_embeddings"], nn.QuantizedEmbedding)
    linears = [m for p, m in layers.items() if p.endswith(("_proj", "proj_1", "proj_2"))]
    assert len(linears) == 16 and all(isinstance(m, nn.QuantizedLinear) for m in linears)
    assert not any(isinstance(m, nn.Linear) for m in layers.values())
    assert layers["transformer.layers.0.attn.qkv_proj"].weight.dtype == mx.uint32


def test_quantized_model_tracks_the_float_model_and_output_uses_the_embedding(base_dir):
    model, _ = load_model(base_dir, "float32")
    expected = logits_of(model)
    quant.quantize(model, bits=8, group_size=32)
    got = logits_of(model)
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()
    # Tied output: the logits are the final hidden states times the dequantized embedding.
    emb = model.transformer.token_embeddings
    table = mx.dequantize(emb.weight, emb.scales, emb.biases, emb.group_size, emb.bits)
    hidden = model.hidden(mx.array([IDS]))
    np.testing.assert_allclose(got, np.array(hidden @ table.T), atol=1e-4)


def test_bfloat16_model_keeps_bfloat16_scales_biases_and_norms(tmp_path):
    src = make_model_dir(tmp_path / "bf16", dtype="bfloat16")
    quantize_directory(src, tmp_path / "q")
    # The format as written (the CPU backend's prepare computes in float32 at run time).
    model, _ = load_model(tmp_path / "q", prepare=False)
    params = dict(tree_flatten(model.parameters()))
    floats = {k: v.dtype for k, v in params.items() if v.dtype != mx.uint32}
    assert floats and set(floats.values()) == {mx.bfloat16}
    assert any(k.endswith(".scales") for k in floats) and any(k.endswith("norm.weight")
                                                              for k in floats)


def raised_paths(entry: dict) -> list[str]:
    return sorted(k for k, v in entry.items() if isinstance(v, dict))


BLOCK_LAYERS = ("attn.qkv_proj", "attn.out_proj", "ffn.proj_1", "ffn.proj_2")


@pytest.mark.parametrize(
    "recipe, expected",
    [
        ("early", [f"transformer.layers.0.{n}" for n in BLOCK_LAYERS]),
        ("early-embed", ["transformer.token_embeddings"]
         + [f"transformer.layers.0.{n}" for n in BLOCK_LAYERS]),
        ("early-embed-attn", ["transformer.token_embeddings"]
         + [f"transformer.layers.0.{n}" for n in BLOCK_LAYERS]
         + [f"transformer.layers.{i}.attn.{n}" for i in (1, 2, 3)
            for n in ("qkv_proj", "out_proj")]),
    ],
)
def test_recipes_raise_the_layers_they_name(recipe, expected):
    model = Model(ModelArgs.from_config(quantizable_config()))  # 4 blocks: a quarter is one
    entry = quant.quantize(model, bits=3, group_size=64, recipe=recipe)
    high = {"group_size": 64, "bits": HIGHER_BITS[3], "mode": "affine"}
    assert raised_paths(entry) == sorted(expected)
    assert all(entry[k] == high for k in expected)
    layers = dict(model.named_modules())
    for path, module in layers.items():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            assert module.bits == (6 if path in expected else 3), path


def test_early_recipe_at_the_270M_shape():
    # 16 blocks: the first four are raised; the plan's size follows without allocating.
    config = published_config("270M")
    entry = quant.plan(Model(ModelArgs.from_config(config)), 4, 64, "early")
    assert raised_paths(entry) == sorted(f"transformer.layers.{i}.{n}" for i in range(4)
                                         for n in BLOCK_LAYERS)
    params = sum(math.prod(s) for s in tensor_shapes(config).values())
    bits_per_weight = 8 * config_weight_bytes({**config, "quantization": entry}) / params
    assert 4.6 < bits_per_weight < 4.8


def test_recipes_raise_an_untied_output_head():
    model = Model(ModelArgs.from_config(quantizable_config(share_input_output_layers=False)))
    entry = quant.quantize(model, bits=4, group_size=128, recipe="early-embed")
    assert "lm_head" in raised_paths(entry) and "transformer.token_embeddings" in entry
    assert model.lm_head.bits == 6 and model.transformer.layers[1].attn.qkv_proj.bits == 4


def test_config_entry_round_trips_through_the_loader(tmp_path, base_dir):
    quantize_directory(base_dir, tmp_path / "mixed", bits=2, group_size=32,
                       recipe="early-embed-attn")
    config = json.loads((tmp_path / "mixed" / "config.json").read_text())
    model = build_model(config)
    layers = dict(model.named_modules())
    for path, module in layers.items():
        if hasattr(module, "bits"):
            expected = config["quantization"].get(path, config["quantization"])
            assert (module.bits, module.group_size) == (expected["bits"], expected["group_size"])
    load_model(tmp_path / "mixed")  # strict: every tensor has the shape the config implies


def test_false_entry_keeps_a_layer_unquantized():
    config = {**quantizable_config(), "quantization": {
        "group_size": 64, "bits": 4, "mode": "affine", "transformer.layers.2.ffn.proj_1": False}}
    layers = dict(build_model(config).named_modules())
    assert type(layers["transformer.layers.2.ffn.proj_1"]) is nn.Linear
    assert isinstance(layers["transformer.layers.2.ffn.proj_2"], nn.QuantizedLinear)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 7}, r"Unsupported bit width 7: choose one of \(2, 3, 4, 5, 6, 8\)\."),
        ({"group_size": 48}, r"Unsupported group size 48: choose one of \(32, 64, 128\)\."),
        ({"recipe": "mixed_4_6"}, "Unknown quantization recipe 'mixed_4_6': choose one of "
                                  "early, early-embed, early-embed-attn."),
        ({"bits": 8, "recipe": "early"}, "Recipe 'early' gives some layers more than 8 bits"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    model = Model(ModelArgs.from_config(quantizable_config()))
    with pytest.raises(SlmError, match=message):
        quant.quantize(model, **kwargs)
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def test_group_size_that_does_not_divide_a_layer_names_it():
    # tiny_config's FFN widths are 32, 96 and 160: only 32 divides them all.
    model = Model(ModelArgs.from_config(tiny_config(vocab_size=1000)))
    with pytest.raises(SlmError, match=r"^Group size 64 does not divide the width 32 of layer "
                                       r"transformer\.layers\.0\.ffn\.proj_2; choose "
                                       r"--q-group-size 32\.$"):
        quant.quantize(model, bits=4, group_size=64)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"bits": 4, "group_size": 64, "mode": "mxfp4"}, "Unsupported quantization mode 'mxfp4'"),
        ({"bits": 4, "group_size": 64, "lm_head": 8}, "entry 'lm_head' must be an object or "
                                                      "false"),
        ({"bits": 4, "group_size": 64, "transformer.layers.9.ffn.proj_1": {
            "bits": 8, "group_size": 64}}, "names 'transformer.layers.9.ffn.proj_1', which is "
                                           "not a layer of this model"),
        ({"bits": 4, "group_size": 64, "lm_head": {"bits": 1, "group_size": 64}},
         "Unsupported bit width 1"),
    ],
)
def test_bad_config_entries_are_refused_by_the_loader(entry, message):
    with pytest.raises(SlmError, match=message):
        build_model({**quantizable_config(), "quantization": entry})


def test_weight_bytes_from_config_match_the_written_files(tmp_path, base_dir):
    for bits, group_size, recipe in ((4, 64, None), (3, 32, "early-embed-attn"),
                                       (6, 128, "early-embed")):
        out = tmp_path / f"q{bits}"
        result = quantize_directory(base_dir, out, bits, group_size, recipe)
        config = {**quantizable_config(vocab_size=1000), "quantization": result.quantization}
        assert config_weight_bytes(config) == header_bytes(out)
    assert config_weight_bytes(quantizable_config(vocab_size=1000)) == header_bytes(base_dir)


@pytest.mark.parametrize("size", ["270M", "1.1B", "3B"])
def test_weight_memory_targets_at_real_shapes(size):
    # Bytes follow from the published shapes (MLX is lazy: nothing is allocated).
    config = published_config(size)
    float16 = config_weight_bytes(config)
    ratio = {bits: config_weight_bytes({**config, "quantization": {
        "group_size": 64, "bits": bits}}) / float16 for bits in (4, 8)}
    assert ratio[4] <= 0.30 and ratio[8] <= 0.55
    assert ratio[4] == pytest.approx(4.5 / 16, abs=0.002)  # 4 bits + two 16-bit values per 64


def test_our_quantized_directories_load_in_mlx_lm(tmp_path, base_dir):
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    for name, kwargs in (("q4", {}), ("mixed", {"bits": 3, "recipe": "early-embed-attn"})):
        out = tmp_path / name
        quantize_directory(base_dir, out, **kwargs)
        # float32 compute on both sides, so only the reading of the files can differ.
        ours, _ = load_model(out, "float32")
        theirs, _ = mlx_lm_utils.load_model(out)
        theirs.set_dtype(mx.float32)
        np.testing.assert_allclose(logits_of(ours), logits_of(theirs), atol=1e-4)
        theirs_layers = dict(theirs.named_modules())
        for path, module in ours.named_modules():
            if hasattr(module, "bits"):
                assert theirs_layers[path].bits == module.bits


def mlx_lm_quantized_dir(out, hub_dir, group_size, bits, predicate=None):
    """Quantize with mlx-lm's own functions and save with its own writers."""
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    model, config = mlx_lm_utils.load_model(hub_dir)
    model, config = mlx_lm_utils.quantize_model(model, config, group_size, bits,
                                                quant_predicate=predicate)
    mlx_lm_utils.save_model(out, model)
    mlx_lm_utils.save_config(config, out / "config.json")
    return model


def test_mlx_lm_quantized_directories_load_in_ours(tmp_path, base_dir):
    def mixed(path, module):
        return {"group_size": 32, "bits": 8} if "embeddings" in path else True

    for name, predicate in (("q4", None), ("mixed", mixed)):
        theirs = mlx_lm_quantized_dir(tmp_path / name, base_dir, 64, 4, predicate)
        theirs.set_dtype(mx.float32)
        ours, config = load_model(tmp_path / name, "float32")
        assert quant.is_quantized(config)
        np.testing.assert_allclose(logits_of(ours), logits_of(theirs), atol=1e-4)
    assert ours.transformer.token_embeddings.bits == 8


def test_mlx_lm_directory_with_layers_it_left_unquantized_loads(tmp_path):
    # mlx-lm skips, without recording it, a layer whose width the group size does not divide.
    hub = write_hub_checkpoint(tmp_path / "hub", tiny_config(vocab_size=1000), seed=2)
    theirs = mlx_lm_quantized_dir(tmp_path / "q", hub, 64, 4)
    ours, _ = load_model(tmp_path / "q")
    ffn = [layer.ffn for layer in ours.layers]
    assert not any(isinstance(f.proj_2, nn.QuantizedLinear) for f in ffn)  # widths 32, 96, 160
    assert all(isinstance(f.proj_1, nn.QuantizedLinear) for f in ffn)  # width 64
    ids = [1, 5, 999, 17, 3]
    np.testing.assert_allclose(logits_of(ours, ids), logits_of(theirs, ids), atol=1e-4)
