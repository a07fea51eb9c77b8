"""Malformed files end in our one-line error: never a traceback, hang or huge allocation.

Generated inputs (hypothesis) for every reader a model directory goes through:
config.json, the safetensors header, the shard index and the tokenizer file.
"""

import json
import random
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_slm.commands.cli import main
from mlx_slm.errors import SlmError
from mlx_slm.loader import load
from mlx_slm.model import ModelArgs
from mlx_slm.tokenizer import Tokenizer
from mlx_slm.weights import read_config, read_safetensors_header, weight_files
from tests.conftest import LLAMA2_TOKENIZER

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def only_our_error(fn, *args):
    """Run `fn`; any failure must be an SlmError with a one-line message."""
    try:
        return fn(*args)
    except SlmError as err:
        assert "\n" not in str(err)
        return None


@FUZZ
@given(st.binary(max_size=300))
def test_config_bytes(tmp_path, data):
    (tmp_path / "config.json").write_bytes(data)
    config = only_our_error(read_config, tmp_path)
    if config is not None:
        only_our_error(ModelArgs.from_config, config)


@FUZZ
@given(st.dictionaries(st.sampled_from([
    "model_type", "model_dim", "head_dim", "num_transformer_layers", "num_query_heads",
    "num_kv_heads", "ffn_multipliers", "ffn_dim_divisor", "vocab_size", "rope_freq_constant",
    "max_context_length"]), JSON, max_size=11))
def test_config_values(overrides):
    from mlx_slm.synthetic import tiny_config

    only_our_error(ModelArgs.from_config, {**tiny_config(), **overrides})


def header_file(path, header_bytes: bytes, data: bytes = b"", claimed: int | None = None):
    n = len(header_bytes) if claimed is None else claimed
    path.write_bytes(n.to_bytes(8, "little") + header_bytes + data)
    return path


ENTRY = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "U32", "I8", "F8", "complex", 3]),
    "shape": st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), JSON),
    "data_offsets": st.one_of(st.lists(st.integers(-5, 2**40), min_size=2, max_size=2), JSON),
})


@FUZZ
@given(st.dictionaries(st.text(max_size=10), st.one_of(ENTRY, JSON), max_size=4),
       st.binary(max_size=64))
def test_safetensors_header_structure(tmp_path, header, data):
    path = header_file(tmp_path / "model.safetensors", json.dumps(header).encode(), data)
    only_our_error(read_safetensors_header, path)


@FUZZ
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_safetensors_header_bytes(tmp_path, raw, claimed):
    path = header_file(tmp_path / "model.safetensors", raw, claimed=claimed)
    only_our_error(read_safetensors_header, path)


@FUZZ
@given(JSON)
def test_shard_index(tmp_path, index):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    files = only_our_error(weight_files, tmp_path)
    for file in files or ():
        assert file.parent == tmp_path


def test_tokenizer_mutations(tmp_path):
    """Flipped, truncated and random bytes: our error or a loadable (if odd) vocabulary."""
    data = LLAMA2_TOKENIZER.read_bytes()
    rng = random.Random(0)
    for i in range(150):
        mutated = bytearray(data)
        kind = i % 3
        if kind == 0:
            for _ in range(rng.randrange(1, 20)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        elif kind == 1:
            mutated = mutated[: rng.randrange(len(mutated))]
        else:
            mutated = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        path = tmp_path / f"t{i}.model"
        path.write_bytes(bytes(mutated))
        tokenizer = only_our_error(Tokenizer, path)
        if tokenizer is not None:
            tokenizer.decode(tokenizer.encode("hello world"))


@pytest.mark.parametrize("damage", ["truncate", "garble-header", "drop-tensor", "bad-index"])
def test_damaged_model_dir_gives_one_line_cli_error(tmp_path, model_dir, damage):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = broken / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif damage == "garble-header":
        raw = bytearray(weights.read_bytes())
        raw[10:30] = b"\xff" * 20
        weights.write_bytes(bytes(raw))
    elif damage == "drop-tensor":
        import mlx.core as mx

        tensors = mx.load(str(weights))
        del tensors["transformer.layers.1.ffn.proj_2.weight"]
        mx.save_safetensors(str(weights), tensors)
    else:
        (broken / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x"}}')
    result = CliRunner().invoke(main, ["generate", "-m", str(broken), "-n", "1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    if damage == "drop-tensor":
        assert "transformer.layers.1.ffn.proj_2.weight is missing" in result.stderr


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path, model_dir, tiny_tokenizer_path):
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    shutil.copy(tiny_tokenizer_path, other / "tokenizer.model")
    with pytest.raises(SlmError, match="has 300 pieces but config.json's vocab_size is 32000"):
        load(other)
