"""The converted format interoperates with mlx-lm both ways, with matching logits."""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.convert.pipeline import convert, tokenizer_config
from mlx_slm.loader import load, load_model
from mlx_slm.weights import read_config
from tests.conftest import LLAMA2_TOKENIZER

mlx_lm = pytest.importorskip("mlx_lm")

IDS = [1, 450, 7483, 310, 8046, 338, 29871, 13, 31999, 42]
# transformers 5 (its Llama tokenizer ignores `legacy`) splits a leading space or a run of
# spaces differently from SentencePiece, so these texts have neither.
TEXTS = ["The capital of California is", "two\nlines\n", "naïve café ✓ 日本", "end "]


def logits(model) -> np.ndarray:
    return np.array(model(mx.array([IDS]))[0].astype(mx.float32))


def assert_close(got: np.ndarray, expected: np.ndarray) -> None:
    """float16 logits from two implementations that order their sums differently."""
    assert np.abs(got - expected).max() <= 0.01 * np.abs(expected).max()


def quiet(_message):
    pass


@pytest.mark.parametrize("quantize", [False, True])
def test_our_output_loads_in_mlx_lm(tmp_path, hub_checkpoint, quantize):
    out = tmp_path / "ours"
    convert(hub_checkpoint, out, tokenizer=str(LLAMA2_TOKENIZER), quantize=quantize,
            q_group_size=32, log=quiet)
    ours, our_tokenizer = load(out)
    theirs, their_tokenizer = mlx_lm.load(str(out))
    assert_close(logits(theirs), logits(ours))
    for text in TEXTS:
        ids = our_tokenizer.encode(text)
        assert their_tokenizer.encode(text) == ids, text
        assert their_tokenizer.decode(ids[1:]) == our_tokenizer.decode(ids[1:])
    assert their_tokenizer.eos_token_id == 2 and their_tokenizer.bos_token_id == 1


@pytest.fixture(scope="module")
def mlx_lm_source(tmp_path_factory, hub_checkpoint):
    """A Hub-layout directory with the tokenizer files mlx-lm's converter needs."""
    src = tmp_path_factory.mktemp("mlx_lm_src") / "OpenELM-tiny"
    shutil.copytree(hub_checkpoint, src)
    config = read_config(src)
    del config["auto_map"]  # else transformers asks whether to run Apple's remote code
    (src / "config.json").write_text(json.dumps(config))
    shutil.copy(LLAMA2_TOKENIZER, src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(config)))
    return src


@pytest.mark.parametrize("quantize", [False, True])
def test_mlx_lm_output_loads_in_ours(tmp_path, mlx_lm_source, quantize):
    from mlx_lm.convert import convert as mlx_lm_convert

    out = tmp_path / "theirs"
    mlx_lm_convert(str(mlx_lm_source), str(out), dtype="float16", quantize=quantize,
                   q_group_size=32, q_bits=4)
    theirs, _ = mlx_lm.utils.load_model(out)
    ours, config = load_model(out)
    assert bool(config.get("quantization")) == quantize
    assert_close(logits(ours), logits(theirs))
    # Re-converted by us (with our metadata and tokenizer), it still computes the same.
    again = tmp_path / "again"
    convert(out, again, tokenizer=str(LLAMA2_TOKENIZER), log=quiet)
    model, _ = load(again)
    assert_close(logits(model), logits(theirs))
