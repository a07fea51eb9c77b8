"""The LoRA engine: gradients, frozen (quantized) bases, fusing, checkpointed blocks."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlx_slm.lora as lora
import mlx_slm.quant as quant
from mlx_slm.errors import SlmError
from mlx_slm.loader import model_from_weights
from mlx_slm.synthetic import random_weights, tiny_config
from mlx_slm.training import (
    Example,
    TrainStep,
    checkpoint_gradients,
    make_batch,
    masked_loss,
    schedule,
    token_nll,
)

CONFIG = tiny_config(vocab_size=64)


def tiny_model(seed: int = 0):
    model = model_from_weights(CONFIG, random_weights(CONFIG, seed, std=0.2), "tiny")
    mx.eval(model.parameters())
    return model


def randomize_adapters(model, seed: int = 1, std: float = 0.02):
    key = mx.random.key(seed)
    updates = {}
    for name, value in lora.adapter_weights(model).items():
        key, sub = mx.random.split(key)
        updates[name] = value + std * mx.random.normal(value.shape, key=sub)
    model.load_weights(list(updates.items()), strict=False)


def batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    examples = [Example([1, *rng.integers(3, 64, n).tolist()], [False] + [True] * n)
                for n in (9, 13)]
    return make_batch(examples, 64)


@pytest.mark.parametrize("dora", [False, True])
def test_lora_gradients_match_finite_differences(dora):
    mx.random.seed(0)
    base = nn.Linear(16, 8, bias=False)
    layer = (lora.DoRALinear if dora else lora.LoRALinear)(base, rank=4, scale=2.0)
    layer.lora_b = 0.1 * mx.random.normal(layer.lora_b.shape)
    x = mx.random.normal((3, 16))

    def f(params):
        layer.update(params)
        return (layer(x) ** 2).sum()

    params = {"lora_a": layer.lora_a, "lora_b": layer.lora_b}
    grads = mx.grad(f)(params)
    if dora:
        # DoRA holds the adapted weight's norm constant in the gradient (the paper's choice,
        # and mlx-lm's): the reference differentiates with the norm frozen at its value.
        norm = mx.linalg.norm(layer._adapted(), axis=1)

        def f(params):  # noqa: F811
            layer.update(params)
            return (((layer.m / norm) * lora.LoRALinear.__call__(layer, x)) ** 2).sum()

    eps = 1e-3
    for name in ("lora_a", "lora_b"):
        flat = np.array(params[name]).ravel()
        for index in (0, 5, flat.size - 1):
            bumped = []
            for sign in (1, -1):
                moved = flat.copy()
                moved[index] += sign * eps
                bumped.append(f({**params, name: mx.array(moved.reshape(params[name].shape))})
                              .item())
            layer.update(params)
            numeric = (bumped[0] - bumped[1]) / (2 * eps)
            analytic = np.array(grads[name]).ravel()[index]
            assert abs(numeric - analytic) <= 2e-2 * max(1.0, abs(numeric)), (name, index)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_the_loss_and_its_gradient_equal_autograd_cross_entropy(dtype):
    logits = (3 * mx.random.normal((2, 7, 50), key=mx.random.key(0))).astype(dtype)
    targets = mx.random.randint(0, 50, (2, 7), key=mx.random.key(1))
    weights = mx.random.uniform(shape=(2, 7), key=mx.random.key(2))

    def ours(x):
        return (token_nll(x, targets).astype(mx.float32) * weights).sum()

    def reference(x):
        return (nn.losses.cross_entropy(x.astype(mx.float32), targets) * weights).sum()

    tol = 1e-5 if dtype == mx.float32 else 2e-2
    assert ours(logits).item() == pytest.approx(reference(logits).item(), rel=tol)
    got, expected = mx.grad(ours)(logits), mx.grad(reference)(logits)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.array(got.astype(mx.float32)),
                               np.array(expected.astype(mx.float32)),
                               atol=1e-6 if dtype == mx.float32 else 1e-2)


def test_fresh_adapters_change_nothing_and_only_they_train():
    model = tiny_model()
    ids = mx.array([[1, 5, 9, 12, 40]])
    before = model(ids)
    mx.random.seed(0)
    lora.apply(model, lora.LoRAOptions(num_layers=2, targets=("qkv_proj", "proj_2")))
    assert mx.allclose(model(ids), before, atol=1e-6)
    trainable = [name for name, _ in tree_flatten(model.trainable_parameters())]
    assert sorted(trainable) == sorted(
        f"transformer.layers.{i}.{path}.{leaf}" for i in (1, 2)
        for path in ("attn.qkv_proj", "ffn.proj_2") for leaf in ("lora_a", "lora_b"))


def test_bad_options_are_refused():
    model = tiny_model()
    with pytest.raises(SlmError, match="--num-layers"):
        lora.apply(model, lora.LoRAOptions(num_layers=9))
    with pytest.raises(SlmError, match="target 'q_proj'"):
        lora.apply(model, lora.LoRAOptions(targets=("q_proj",)))


@pytest.mark.parametrize("dora", [False, True])
def test_fused_logits_equal_the_adapter_model(dora):
    model = tiny_model()
    mx.random.seed(0)
    lora.apply(model, lora.LoRAOptions(rank=4, dora=dora))
    randomize_adapters(model)
    ids = mx.array([[1, 5, 9, 12, 40, 7]])
    adapted = model(ids)
    lora.fuse(model)
    assert not lora.adapter_weights(model)
    assert all(type(m) is not lora.LoRALinear for _, m in model.named_modules())
    np.testing.assert_allclose(np.array(model(ids)), np.array(adapted), atol=1e-5)


def test_qlora_trains_and_leaves_the_4bit_base_unchanged():
    model = tiny_model()
    quant.quantize(model, bits=4, group_size=32)
    frozen = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    mx.random.seed(0)
    lora.apply(model, lora.LoRAOptions(rank=4))
    assert isinstance(model.layers[0].attn.qkv_proj.linear, nn.QuantizedLinear)
    step = TrainStep(model, optim.Adam(learning_rate=5e-2))
    data = batch()
    first = masked_loss(model, data.inputs, data.targets, data.mask)[0].item()
    for _ in range(20):
        mx.eval(step(data), model.state)
    assert masked_loss(model, data.inputs, data.targets, data.mask)[0].item() < first - 0.5
    after = dict(tree_flatten(model.parameters()))
    for name, value in frozen.items():
        path = name.replace(".weight", ".linear.weight").replace(".scales", ".linear.scales")
        path = path.replace(".biases", ".linear.biases")
        now = after.get(name, after.get(path))
        assert now is not None, name
        assert np.array_equal(np.array(now), value), name


def test_accumulated_gradients_equal_one_big_batch():
    # Two examples of equal length: the mean of the two batches' mean gradients is the
    # gradient of their joint batch.
    rng = np.random.default_rng(0)
    examples = [Example([1, *rng.integers(3, 64, 12).tolist()], [False] + [True] * 12)
                for _ in range(2)]
    results = []
    for accumulate, batches in ((1, [examples]), (2, [examples[:1], examples[1:]])):
        model = tiny_model()
        mx.random.seed(0)
        lora.apply(model, lora.LoRAOptions(rank=4))
        randomize_adapters(model)
        step = TrainStep(model, optim.SGD(learning_rate=0.5), accumulate)
        for part in batches:
            mx.eval(step(make_batch(part, 64)), model.state)
        results.append(lora.adapter_weights(model))
    for name, value in results[0].items():
        np.testing.assert_allclose(np.array(results[1][name]), np.array(value), atol=1e-6)


def test_checkpointed_blocks_give_the_same_gradients():
    grads = []
    for checkpointed in (False, True):
        model = tiny_model()
        mx.random.seed(0)
        lora.apply(model, lora.LoRAOptions(rank=4))
        randomize_adapters(model)
        if checkpointed:
            checkpoint_gradients(model)
        data = batch()
        _, g = nn.value_and_grad(model, masked_loss)(model, data.inputs, data.targets, data.mask)
        grads.append(dict(tree_flatten(g)))
    for name, value in grads[0].items():
        np.testing.assert_allclose(np.array(grads[1][name]), np.array(value), atol=1e-6)


def test_schedule_warms_up_then_decays_to_the_floor():
    lr = schedule(1e-3, iters=100, warmup=10, min_lr=1e-5)
    assert lr(0).item() == 0.0
    assert lr(10).item() == pytest.approx(1e-3)
    assert lr(55).item() < 1e-3
    assert lr(100).item() == pytest.approx(1e-5)
