"""Every bad input to `mlx-slm convert`: one line naming the problem, exit 1, nothing written."""

import json
import shutil

import pytest
from click.testing import CliRunner

from mlx_slm.commands.cli import main
from mlx_slm.synthetic import random_weights, tiny_config, write_hub_checkpoint
from mlx_slm.weights import save_weights
from tests.conftest import LLAMA2_TOKENIZER
from tests.test_convert import error_of, leftovers

LAYER1 = "transformer.layers.1."


def rewrite_weights(src, change):
    weights = random_weights(tiny_config(), seed=3)
    change(weights)
    (src / "model.safetensors").unlink()
    save_weights(src, weights, metadata={"format": "pt"})


def no_weights(src):
    (src / "model.safetensors").unlink()


def corrupt_header(src):
    path = src / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8
    path.write_bytes(bytes(data))


def not_safetensors(src):
    (src / "model.safetensors").write_bytes(b"<html>403 Forbidden</html>" * 10)


def truncated(src):
    path = src / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])


def wrong_shape(src):
    import mlx.core as mx

    def change(w):
        w[LAYER1 + "attn.out_proj.weight"] = mx.zeros((64, 48))

    rewrite_weights(src, change)


def missing_tensor(src):
    rewrite_weights(src, lambda w: w.pop(LAYER1 + "ffn_norm.weight"))


def unknown_model_type(src):
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))


def other_vocabulary(src):
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": 50000}))


def missing_shard(src):
    shutil.rmtree(src)
    write_hub_checkpoint(src, tiny_config(), seed=3, max_shard_bytes=200_000)
    next(src.glob("model-00002-of-*.safetensors")).unlink()


@pytest.mark.parametrize(
    "damage, message",
    [
        (no_weights, "No safetensors weights in {src} (expected model.safetensors)."),
        (corrupt_header, "{src}/model.safetensors has a corrupt safetensors header; re-download"),
        (not_safetensors, "{src}/model.safetensors is truncated or not a safetensors file"),
        (truncated, "lies beyond the end of the file (the file is truncated)"),
        (wrong_shape, f"{{src}}: tensor {LAYER1}attn.out_proj.weight has shape (64, 48), "
                      "config.json implies (64, 64)."),
        (missing_tensor, f"{{src}}: tensor {LAYER1}ffn_norm.weight is missing;"),
        (unknown_model_type, "Unsupported model_type 'llama' in config.json"),
        (missing_shard, "model-00002-of-"),
        (other_vocabulary, "{src}/config.json: vocab_size is 50000, but OpenELM's Llama-2 "
                           "tokenizer has 32000 pieces; this is not an OpenELM checkpoint."),
    ],
)
def test_bad_source(tmp_path, hub_checkpoint, damage, message):
    src = tmp_path / "src"
    shutil.copytree(hub_checkpoint, src)
    damage(src)
    out = tmp_path / "out" / "model"
    result = CliRunner().invoke(
        main, ["convert", str(src), str(out), "--tokenizer", str(LLAMA2_TOKENIZER)]
    )
    assert message.format(src=src) in error_of(result)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/nowhere", "{tmp}/out"],
         "{tmp}/nowhere is neither a directory nor a Hub repo id (owner/name)."),
        (["{src}/config.json", "{tmp}/out"],
         "{src}/config.json is a file; SOURCE must be a model directory or a Hub repo id."),
        (["{src}", "{src}", "--force"],
         "{src} is the source directory; choose another output directory."),
        (["{src}", "{src}/config.json"],  # an output inside the source, whatever it is
         "{src}/config.json is inside the source directory {src}; choose an output directory "
         "outside it."),
        (["{src}", "{tmp}/file"],
         "{tmp}/file exists and is not a directory; choose another output path."),
        (["{src}", "{tmp}/out", "--revision", "main"],
         "--revision applies to Hub repos only; SOURCE is a local directory."),
        (["{src}", "{tmp}/out", "--tokenizer", "{tmp}/missing.model"],
         "--tokenizer {tmp}/missing.model: no such file, and not a Hub repo id (owner/name)."),
        (["{src}", "{tmp}/out", "--tokenizer", "{tmp}"],
         "--tokenizer {tmp}: the directory has no tokenizer.model."),
        (["{src}", "{tmp}/out", "-q"],
         "Group size 64 does not divide the width 32 of layer transformer.layers.0.ffn.proj_2; "
         "choose --q-group-size 32."),
        (["{src}", "{tmp}/out", "-q", "--q-recipe", "no-such-recipe"],
         "'no-such-recipe'"),
    ],
)
def test_bad_arguments(tmp_path, hub_checkpoint, args, message):
    src = tmp_path / "src"
    shutil.copytree(hub_checkpoint, src)
    (tmp_path / "file").write_text("not a directory")
    before = sorted(p.name for p in tmp_path.iterdir())
    fill = {"tmp": tmp_path, "src": src}
    argv = ["convert", *(a.format(**fill) for a in args)]
    if "--tokenizer" not in argv:
        argv += ["--tokenizer", str(LLAMA2_TOKENIZER)]
    assert message.format(**fill) in error_of(CliRunner().invoke(main, argv))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in hub_checkpoint.iterdir())


def test_symlinked_destination_is_refused(tmp_path, hub_checkpoint):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    result = CliRunner().invoke(main, ["convert", str(hub_checkpoint), str(link), "--force",
                                       "--tokenizer", str(LLAMA2_TOKENIZER)])
    assert error_of(result) == (
        f"Error: {link} is a symbolic link; give the directory it points to instead."
    )
    assert list(real.iterdir()) == []
