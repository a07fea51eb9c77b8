"""Adapters move between mlx-slm and mlx-lm both ways, with the same logits."""

import json
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.apps.finetune import FinetuneRequest, TrainOptions, finetune
from mlx_slm.apps.finetune_data import DataOptions
from mlx_slm.convert.pipeline import tokenizer_config
from mlx_slm.loader import load_model
from mlx_slm.lora import LoRAOptions
from mlx_slm.store.files import write_json
from mlx_slm.synthetic import random_weights, tiny_config
from mlx_slm.weights import CONFIG_FILE, save_weights
from tests.conftest import LLAMA2_TOKENIZER

mlx_lm = pytest.importorskip("mlx_lm")
from mlx_lm.tuner.utils import load_adapters  # noqa: E402

IDS = mx.array([[1, 450, 7483, 310, 8046, 338, 29871, 13]])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny float32 model with the files mlx-lm's trainer needs (a tokenizer config)."""
    out = tmp_path_factory.mktemp("ftlm") / "tiny"
    out.mkdir()
    config = tiny_config()
    weights = random_weights(config, 5, std=0.3)
    mx.eval(weights)
    write_json(out / CONFIG_FILE, config)
    save_weights(out, weights)
    shutil.copy(LLAMA2_TOKENIZER, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(config)))
    return out


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ftlmdata")
    for split in ("train", "valid"):
        (folder / f"{split}.jsonl").write_text("\n".join(
            json.dumps({"text": f"The capital of place {i} is city {i}."}) for i in range(8)))
    return folder


def their_logits(model_dir, adapter) -> np.ndarray:
    model, _ = mlx_lm.utils.load_model(model_dir)
    load_adapters(model, str(adapter))
    return np.array(model(IDS))


def our_logits(model_dir, adapter=None) -> np.ndarray:
    model, _ = load_model(model_dir, adapter=adapter)
    return np.array(model(IDS))


@pytest.mark.parametrize("lora", [
    LoRAOptions(),
    LoRAOptions(rank=4, scale=2.0, num_layers=2, targets=("qkv_proj", "proj_2")),
    LoRAOptions(rank=4, scale=2.0, dora=True),
], ids=["lora", "subset", "dora"])
def test_our_adapter_loads_in_mlx_lm(tmp_path, model_dir, text_data, lora):
    adapter = tmp_path / "ours"
    finetune(FinetuneRequest(str(model_dir), DataOptions(str(text_data)), str(adapter), lora,
                             TrainOptions(iters=5, batch_size=2, learning_rate=1e-2)))
    ours = our_logits(model_dir, adapter)
    assert np.abs(ours - our_logits(model_dir)).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(their_logits(model_dir, adapter), ours, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_an_mlx_lm_lora_adapter_loads_in_ours(tmp_path, model_dir, text_data, kind):
    adapter = tmp_path / "theirs"
    done = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "lora", "--model", str(model_dir), "--train",
         "--data", str(text_data), "--num-layers", "2", "--iters", "3", "--batch-size", "2",
         "--learning-rate", "1e-2", "--fine-tune-type", kind, "--adapter-path", str(adapter),
         "--steps-per-eval", "100", "--val-batches", "1"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = our_logits(model_dir, adapter)
    assert np.abs(ours - our_logits(model_dir)).max() > 1e-2
    np.testing.assert_allclose(ours, their_logits(model_dir, adapter), atol=2e-4, rtol=1e-4)
