"""The GGUF that benchmarks/llama_cpp.py writes for llama.cpp, read back with gguf's own
reader: OpenELM's per-layer hyperparameters, tensor names and shapes, the split FFN, and the
Llama-2 vocabulary. No llama.cpp build is needed."""

import importlib.util
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from gguf import GGUFReader, TokenType

from mlx_slm.synthetic import random_weights, tiny_config

ROOT = Path(__file__).parent.parent
TOKENIZER = ROOT / "tests" / "data" / "llama2-tokenizer.model"


def load_script():
    spec = importlib.util.spec_from_file_location("llama_cpp_bench",
                                                  ROOT / "benchmarks" / "llama_cpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_divisible(v: float, d: int) -> int:
    """Apple's rounding of the layer-wise FFN widths (docs: openelm.md)."""
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    config = tiny_config()
    weights = random_weights(config, seed=3)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    load_script().write_gguf(path, config, weights, TOKENIZER)
    return config, weights, GGUFReader(path)


def value(reader, key):
    return reader.fields[key].contents()


def test_hyperparameters_are_per_layer(written):
    config, _, reader = written
    widths = [make_divisible(m * config["model_dim"], config["ffn_dim_divisor"])
              for m in config["ffn_multipliers"]]
    assert value(reader, "general.architecture") == "openelm"
    assert value(reader, "openelm.block_count") == 3
    assert value(reader, "openelm.embedding_length") == 64
    assert value(reader, "openelm.feed_forward_length") == widths
    assert value(reader, "openelm.attention.head_count") == [4, 4, 8]
    assert value(reader, "openelm.attention.head_count_kv") == [1, 2, 2]
    assert value(reader, "openelm.attention.key_length") == 16
    assert value(reader, "openelm.rope.dimension_count") == 16
    assert value(reader, "openelm.rope.freq_base") == config["rope_freq_constant"]


def test_tensor_names_shapes_and_split_ffn(written):
    config, weights, reader = written
    tensors = {t.name: t for t in reader.tensors}
    per_layer = ["attn_norm", "attn_qkv", "attn_q_norm", "attn_k_norm", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(3) for n in per_layer}
    assert set(tensors) == expected
    # GGUF lists dimensions fastest first: a [rows, cols] matrix reads back as (cols, rows).
    assert tuple(tensors["token_embd.weight"].shape) == (64, 32000)
    assert tuple(tensors["blk.2.attn_qkv.weight"].shape) == (64, (8 + 2 * 2) * 16)
    for i, multiplier in enumerate(config["ffn_multipliers"]):
        f = make_divisible(multiplier * 64, config["ffn_dim_divisor"])
        proj_1 = np.array(weights[f"transformer.layers.{i}.ffn.proj_1.weight"].astype(mx.float32))
        gate, up = tensors[f"blk.{i}.ffn_gate.weight"], tensors[f"blk.{i}.ffn_up.weight"]
        assert tuple(gate.shape) == tuple(up.shape) == (64, f)
        np.testing.assert_array_equal(np.asarray(gate.data).reshape(f, 64), proj_1[:f])
        np.testing.assert_array_equal(np.asarray(up.data).reshape(f, 64), proj_1[f:])


def test_vocabulary_is_llama2(written):
    _, _, reader = written
    assert value(reader, "tokenizer.ggml.model") == "llama"
    tokens = value(reader, "tokenizer.ggml.tokens")
    types = value(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 32000
    # Pieces fixed by the Llama-2 model (openelm.md): 1 <s>, 2 </s>, 13 a byte piece.
    assert tokens[1:3] == ["<s>", "</s>"] and tokens[13] == "<0x0A>"
    assert types[0] == TokenType.UNKNOWN and types[1] == TokenType.CONTROL
    assert types[13] == TokenType.BYTE and types[450] == TokenType.NORMAL
    assert value(reader, "tokenizer.ggml.bos_token_id") == 1
    assert value(reader, "tokenizer.ggml.add_bos_token") is True
