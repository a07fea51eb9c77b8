"""`mlx-slm fuse`: the fused model computes what the adapter model does; re-quantized, it
costs what a quantization costs."""

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import mlx_slm.lora as lora
from mlx_slm.adapters import save_adapter
from mlx_slm.apps.quality_report import compare
from mlx_slm.apps.quantize import quantize_directory
from mlx_slm.commands.cli import main
from mlx_slm.cpu import kernels
from mlx_slm.loader import load_model
from tests.test_quant import make_model_dir, quantizable_config

IDS = mx.array([[1, 450, 7483, 310, 8046, 338, 29871, 13, 42]])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("fuse") / "base", quantizable_config(),
                          seed=4, dtype="float32")


def write_adapter(model_dir, out, options: lora.LoRAOptions, seed: int = 2):
    """An adapter with random (not zero) lora_b, so that fusing has something to merge."""
    model, _ = load_model(model_dir, prepare=False)
    mx.random.seed(seed)
    lora.apply(model, options)
    model.load_weights([(name, mx.random.normal(value.shape) * 0.05)
                        for name, value in lora.adapter_weights(model).items()
                        if name.endswith("lora_b")], strict=False)
    out.mkdir()
    save_adapter(out, model, options)
    return out


def logits(model_dir, adapter=None):
    model, _ = load_model(model_dir, adapter=adapter)
    return np.array(model(IDS))


def fuse(*args):
    return CliRunner().invoke(main, ["fuse", *map(str, args), "--report-tokens", "48"])


@pytest.mark.parametrize("dora", [False, True])
def test_the_fused_model_equals_the_adapter_model(tmp_path, base, dora):
    adapter = write_adapter(base, tmp_path / "adapter", lora.LoRAOptions(rank=4, scale=2.0,
                                                                         dora=dora))
    out = tmp_path / "fused"
    result = fuse(base, adapter, out)
    assert result.exit_code == 0, result.output
    assert f"Fused {adapter} into 16 layers of {base} -> {out}" in result.output
    assert "top-1 agreement" in result.output and "100.00%" in result.output
    expected = logits(base, adapter)
    assert np.abs(expected - logits(base)).max() > 1e-2
    np.testing.assert_allclose(logits(out), expected, atol=2e-4, rtol=1e-4)
    assert "quantization" not in json.loads((out / "config.json").read_text())


def test_fused_and_requantized_costs_what_quantizing_costs(tmp_path, base):
    adapter = write_adapter(base, tmp_path / "adapter", lora.LoRAOptions(rank=4, scale=2.0))
    out = tmp_path / "fused-q4"
    result = fuse(base, adapter, out, "-q")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    from mlx_slm.apps.fuse import fuse_report

    fused = fuse_report(base, adapter, out, max_tokens=48)
    quantize_directory(base, tmp_path / "q4")
    plain = compare(base, tmp_path / "q4", max_tokens=48)
    assert 0 < fused["kl_mean"] <= 2 * plain["kl_mean"] + 1e-4
    assert fused["top1_agreement"] >= plain["top1_agreement"] - 0.1


def test_a_qlora_adapter_fuses_into_its_quantized_base(tmp_path, base):
    q4 = tmp_path / "q4"
    quantize_directory(base, q4)
    adapter = write_adapter(q4, tmp_path / "adapter",
                            lora.LoRAOptions(rank=4, scale=2.0, targets=("qkv_proj",)))
    out = tmp_path / "fused"
    assert fuse(q4, adapter, out, "--no-report").exit_code == 0
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    assert quantization["transformer.layers.0.attn.qkv_proj"] is False
    # Float activations: int8 ones would round x for the unfused quantized qkv_proj only.
    with kernels.int8_activations(False):
        np.testing.assert_allclose(logits(out), logits(q4, adapter), atol=2e-4, rtol=1e-4)

    again = tmp_path / "fused-q4"
    assert fuse(q4, adapter, again, "-q", "--no-report").exit_code == 0
    config = json.loads((again / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    model, _ = load_model(again, prepare=False)
    assert all(type(m).__name__ == "QuantizedLinear" for p, m in model.named_modules()
               if p.endswith("qkv_proj"))
