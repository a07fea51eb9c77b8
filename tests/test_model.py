"""Numerics of our OpenELM against an independent float64 reference and against mlx-lm."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.cache import make_cache
from mlx_slm.errors import SlmError
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model
from mlx_slm.model import ModelArgs, make_divisible
from mlx_slm.synthetic import (
    published_config,
    random_weights,
    tiny_config,
    write_hub_checkpoint,
)
from mlx_slm.weights import load_weights
from tests.reference import forward

IDS = [1, 450, 7483, 310, 8046, 338, 29871, 13, 31999, 42, 7, 450]


def reference_logits(model_dir, config, ids):
    weights = {k: np.array(v.astype(mx.float32)) for k, v in load_weights(model_dir).items()}
    return forward(weights, config, ids)


def test_logits_match_float64_reference(hub_checkpoint):
    model, config = load_model(hub_checkpoint)
    assert len(set(config["num_query_heads"])) > 1 and len(set(config["num_kv_heads"])) > 1
    ours = np.array(model(mx.array([IDS]))[0])
    ref = reference_logits(hub_checkpoint, config, IDS)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    assert np.argmax(ours, -1).tolist() == np.argmax(ref, -1).tolist()


def test_sharded_checkpoint_matches_reference(tmp_path):
    config = tiny_config(vocab_size=1000)
    out = write_hub_checkpoint(tmp_path / "sharded", config, seed=5, max_shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 2
    model, _ = load_model(out)
    ids = [1, 5, 999, 17, 3]
    np.testing.assert_allclose(
        np.array(model(mx.array([ids]))[0]), reference_logits(out, config, ids), atol=1e-4
    )


def test_untied_output_head(tmp_path):
    config = tiny_config(vocab_size=500, share_input_output_layers=False)
    out = write_hub_checkpoint(tmp_path / "untied", config, seed=6)
    model, _ = load_model(out)
    assert "lm_head" in model
    ids = [1, 2, 3, 499]
    np.testing.assert_allclose(
        np.array(model(mx.array([ids]))[0]), reference_logits(out, config, ids), atol=1e-4
    )


def test_logits_equal_mlx_lm(hub_checkpoint):
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    model, _ = load_model(hub_checkpoint)
    theirs, _ = mlx_lm_utils.load_model(hub_checkpoint)
    ids = mx.array([IDS])
    np.testing.assert_allclose(np.array(model(ids)), np.array(theirs(ids)), atol=1e-5)


def test_cached_decoding_equals_full_forward(hub_checkpoint):
    model, _ = load_model(hub_checkpoint)
    full = model(mx.array([IDS]))
    cache = make_cache(model)
    pieces = [model(mx.array([IDS[a:b]]), cache) for a, b in ((0, 5), (5, 6), (6, 9), (9, 12))]
    np.testing.assert_allclose(np.array(mx.concatenate(pieces, 1)), np.array(full), atol=1e-5)
    assert cache[0].offset == len(IDS)


def test_cache_grows_past_its_step(hub_checkpoint):
    model, _ = load_model(hub_checkpoint)
    ids = mx.array([[(7 * i) % 31000 + 1 for i in range(300)]])
    full = model(ids)[0, -1]
    cache = make_cache(model)
    model(ids[:, :250], cache)
    last = None
    for t in range(250, 300):
        last = model(ids[:, t : t + 1], cache)[0, -1]
    np.testing.assert_allclose(np.array(last), np.array(full), atol=1e-4)


def test_greedy_generation_matches_reference(hub_checkpoint):
    model, config = load_model(hub_checkpoint)
    weights = {k: np.array(v) for k, v in load_weights(hub_checkpoint).items()}
    prompt = [1, 450, 7483]
    ids, expected = list(prompt), []
    for _ in range(6):
        token = int(np.argmax(forward(weights, config, ids)[-1]))
        expected.append(token)
        ids.append(token)
    assert list(generate_tokens(model, prompt, max_tokens=6)) == expected


def test_bfloat16_and_float16_close_to_float32(hub_checkpoint):
    ref, _ = load_model(hub_checkpoint)
    expected = np.array(ref(mx.array([IDS])))
    for dtype in ("bfloat16", "float16"):
        model, _ = load_model(hub_checkpoint, dtype=dtype)
        assert model.transformer.norm.weight.dtype == getattr(mx, dtype)
        got = np.array(model(mx.array([IDS])).astype(mx.float32))
        assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def test_layer_widths_follow_make_divisible():
    config = published_config("270M")
    args = ModelArgs.from_config(config)
    assert [args.ffn_dim(i) for i in (0, 15)] == [768, 5120]
    assert make_divisible(0.73 * 1280, 256) == 1024
    assert make_divisible(10, 256) == 256


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "llama"}, "Unsupported model_type 'llama'"),
        ({"num_query_heads": [4, 4]}, "num_query_heads must be a list of 3"),
        ({"head_dim": 0}, "head_dim must be a positive integer"),
        ({"num_kv_heads": [3, 2, 2]}, "layer 0 has 4 query heads, not a multiple of its 3"),
    ],
)
def test_bad_configs_are_rejected_with_reasons(change, message):
    with pytest.raises(SlmError, match=message):
        ModelArgs.from_config({**tiny_config(), **change})


def test_missing_config_key_named():
    config = tiny_config()
    del config["model_dim"]
    with pytest.raises(SlmError, match="lacks required key.*model_dim"):
        ModelArgs.from_config(config)


def test_random_weights_are_seeded():
    a = random_weights(tiny_config(vocab_size=100), seed=1)
    b = random_weights(tiny_config(vocab_size=100), seed=1)
    c = random_weights(tiny_config(vocab_size=100), seed=2)
    name = "transformer.layers.0.attn.qkv_proj.weight"
    assert mx.array_equal(a[name], b[name]) and not mx.array_equal(a[name], c[name])


def test_compiled_decode_step_equals_plain_decoding_across_cache_growth(hub_checkpoint):
    from mlx_slm.generation import DecodeStep, prefill

    model, _ = load_model(hub_checkpoint)
    plain, compiled = make_cache(model), make_cache(model)
    prompt = mx.array(IDS)
    prefill(model, prompt, plain)
    prefill(model, prompt, compiled)
    step = DecodeStep(model)
    tokens = [(37 * i) % 32000 for i in range(260)]  # crosses the 256-position capacity
    for t in tokens:
        want = model(mx.array([[t]]), plain)[:, -1, :]
        got = step(mx.array([[t]]), compiled)
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)
    assert compiled[0].offset == plain[0].offset == len(IDS) + len(tokens)
    assert compiled[0].capacity == 512


def test_no_stale_compiled_step_after_the_weights_change(hub_checkpoint):
    """Nothing compiled is kept on the model: generation after recasting runs the new
    weights (the caller owns any DecodeStep it wants to reuse)."""
    import mlx_slm.quant as quant

    model, _ = load_model(hub_checkpoint, prepare=False)
    keys = set(vars(model))
    float32 = list(generate_tokens(model, IDS, max_tokens=5))
    quant.quantize(model, bits=2, group_size=32)
    uncompiled = list(generate_tokens(model, IDS, max_tokens=5, compiled=False))
    assert list(generate_tokens(model, IDS, max_tokens=5)) == uncompiled != float32
    assert set(vars(model)) == keys  # generating left no attribute behind
