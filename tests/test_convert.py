"""`mlx-slm convert` from local Hub-layout directories: round trips, format, atomic writes."""

import json
import os
import shutil
import subprocess

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from mlx_slm.chat_format import METADATA_KEY
from mlx_slm.commands.cli import main
from mlx_slm.convert.pipeline import convert
from mlx_slm.loader import load, load_model
from mlx_slm.sizes import default_dtype
from mlx_slm.store.manifest import MANIFEST_FILE, manifest_problem
from mlx_slm.synthetic import published_config, tiny_config, write_hub_checkpoint
from mlx_slm.weights import INDEX_FILE, read_config
from tests.conftest import LLAMA2_TOKENIZER

IDS = [1, 450, 7483, 310, 8046, 338, 29871, 13, 31999, 42]
TOLERANCE = {"float32": 1e-5, "bfloat16": 0.05, "float16": 0.01}


def logits(model, ids=IDS) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def run_convert(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def error_of(result) -> str:
    """The one error line of a failed command (progress lines may precede it on stderr)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.splitlines()[-1] == errors[0], result.stderr
    return errors[0]


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def source_logits(hub_checkpoint):
    model, _ = load_model(hub_checkpoint)
    return logits(model)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_round_trip_in_each_dtype(tmp_path, hub_checkpoint, source_logits, dtype):
    out = tmp_path / "out"
    result = run_convert(hub_checkpoint, out, "--dtype", dtype, "--tokenizer", LLAMA2_TOKENIZER)
    assert result.exit_code == 0, result.output
    assert f"-> {out}" in result.output and dtype in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", MANIFEST_FILE, "model.safetensors", "tokenizer.model",
        "tokenizer_config.json",
    ]
    model, tokenizer = load(out)
    assert model.transformer.norm.weight.dtype == getattr(mx, dtype)
    got = logits(model)
    assert np.abs(got - source_logits).max() <= TOLERANCE[dtype] * np.abs(source_logits).max()
    assert tokenizer.encode("The capital of California is") == [1, 450, 7483, 310, 8046, 338]
    assert (out / "tokenizer.model").read_bytes() == LLAMA2_TOKENIZER.read_bytes()
    config = read_config(out)
    source_config = read_config(hub_checkpoint)
    assert "auto_map" not in config and config["torch_dtype"] == dtype
    assert {k: v for k, v in config.items() if k not in (METADATA_KEY, "torch_dtype")} == {
        k: v for k, v in source_config.items() if k not in ("auto_map", "torch_dtype")
    }
    meta = config[METADATA_KEY]
    assert meta["dtype"] == dtype and meta["revision"] is None and meta["instruct"] is False
    assert meta["source"] == str(hub_checkpoint)
    assert meta["tokenizer_sha256"].startswith("9e556afd")
    assert manifest_problem(out) is None
    assert leftovers(tmp_path) == []


def test_default_dtype_is_float16_and_bfloat16_for_3b():
    assert default_dtype(tiny_config()) == "float16"
    assert default_dtype(published_config("1.1B")) == "float16"
    assert default_dtype(published_config("3B")) == "bfloat16"
    assert default_dtype(published_config("3B-Instruct")) == "bfloat16"


def test_sharded_source_to_sharded_output(tmp_path):
    source = write_hub_checkpoint(tmp_path / "src", tiny_config(), seed=4,
                                  max_shard_bytes=100_000)
    assert (source / INDEX_FILE).exists()
    out = tmp_path / "out"
    result = run_convert(source, out, "--dtype", "float32", "--max-shard-size", "150KB",
                         "--tokenizer", LLAMA2_TOKENIZER)
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(shards) > 1
    assert sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    for shard in shards:  # within the limit, unless one tensor alone exceeds it
        tensors = [k for k, v in index["weight_map"].items() if v == shard.name]
        assert shard.stat().st_size <= 150_000 + 10_000 or len(tensors) == 1
    ours, _ = load(out)
    theirs, _ = load_model(source)
    np.testing.assert_allclose(logits(ours), logits(theirs), atol=1e-6)


def test_instruct_flag_from_the_directory_name_or_the_option(tmp_path, hub_checkpoint):
    named = tmp_path / "OpenELM-270M-Instruct"
    shutil.copytree(hub_checkpoint, named)
    convert(named, tmp_path / "a", tokenizer=str(LLAMA2_TOKENIZER), log=lambda _: None)
    assert read_config(tmp_path / "a")[METADATA_KEY]["instruct"] is True
    result = run_convert(named, tmp_path / "b", "--no-instruct", "--tokenizer", LLAMA2_TOKENIZER)
    assert result.exit_code == 0 and "base model" in result.output
    assert read_config(tmp_path / "b")[METADATA_KEY]["instruct"] is False


def test_quantized_conversion(tmp_path, hub_checkpoint, source_logits):
    out = tmp_path / "q"
    result = run_convert(hub_checkpoint, out, "-q", "--q-bits", "8", "--q-group-size", "32",
                         "--tokenizer", LLAMA2_TOKENIZER, "--report-tokens", "64")
    assert result.exit_code == 0, result.output
    assert "8-bit, group size 32" in result.output
    # The quality report follows every quantized conversion, against the source.
    report = result.output.split("Quality of the quantization against the unquantized source:")
    assert len(report) == 2
    for row in ("perplexity", "weight memory", "KL"):
        assert row in report[1]
    quiet = run_convert(hub_checkpoint, tmp_path / "q2", "-q", "--q-group-size", "32",
                        "--no-report", "--tokenizer", LLAMA2_TOKENIZER)
    assert quiet.exit_code == 0 and "Quality of the quantization" not in quiet.output
    config = read_config(out)
    assert config["quantization"] == {"bits": 8, "group_size": 32, "mode": "affine"}
    model, _ = load(out)
    got = logits(model)
    assert np.abs(got - source_logits).max() < 0.05 * np.abs(source_logits).max()
    again = run_convert(out, tmp_path / "qq", "-q", "--tokenizer", LLAMA2_TOKENIZER)
    assert error_of(again).endswith("is already quantized; convert its unquantized source instead.")


def test_reconverting_a_quantized_model_prints_no_quality_report(tmp_path, hub_checkpoint):
    quantized = tmp_path / "q"
    made = run_convert(hub_checkpoint, quantized, "-q", "--q-group-size", "32", "--no-report",
                       "--tokenizer", LLAMA2_TOKENIZER)
    assert made.exit_code == 0, made.output
    result = run_convert(quantized, tmp_path / "q-bf16", "--dtype", "bfloat16")
    assert result.exit_code == 0, result.output
    assert "4-bit, group size 32" in result.output and "bfloat16" in result.output
    assert "Quality" not in result.output and "KL" not in result.output


def test_quantization_options_need_the_flag(tmp_path, hub_checkpoint):
    result = run_convert(hub_checkpoint, tmp_path / "o", "--q-bits", "8")
    assert result.exit_code == 2 and "--q-bits needs -q/--quantize" in result.output
    assert not (tmp_path / "o").exists()


def test_bad_max_shard_size(tmp_path, hub_checkpoint):
    result = run_convert(hub_checkpoint, tmp_path / "o", "--max-shard-size", "lots")
    assert result.exit_code == 2 and "'lots' is not a size such as 5GB" in result.output


def test_force_replaces_only_with_a_complete_directory(tmp_path, hub_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me unless forced")
    refused = run_convert(hub_checkpoint, out, "--tokenizer", LLAMA2_TOKENIZER)
    assert error_of(refused) == (
        f"Error: {out} already exists; pass --force to replace it, or choose another output "
        "directory."
    )
    assert (out / "old.txt").exists()
    # A forced conversion that fails keeps the old directory.
    bad = run_convert(hub_checkpoint, out, "--force", "--tokenizer", tmp_path / "nope.model")
    assert bad.exit_code == 1 and (out / "old.txt").exists()
    forced = run_convert(hub_checkpoint, out, "--force", "--tokenizer", LLAMA2_TOKENIZER)
    assert forced.exit_code == 0, forced.output
    assert not (out / "old.txt").exists() and manifest_problem(out) is None
    assert leftovers(tmp_path) == []


def test_output_directory_parents_are_created(tmp_path, hub_checkpoint):
    out = tmp_path / "a" / "b" / "model"
    assert run_convert(hub_checkpoint, out, "--tokenizer", LLAMA2_TOKENIZER).exit_code == 0
    assert manifest_problem(out) is None


def test_interrupted_write_leaves_nothing(tmp_path, hub_checkpoint, monkeypatch):
    import mlx_slm.weights

    def interrupted(out_dir, *args, **kwargs):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(mlx_slm.weights, "save_weights", interrupted)
    out = tmp_path / "new" / "out"
    result = run_convert(hub_checkpoint, out, "--tokenizer", LLAMA2_TOKENIZER)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert not (tmp_path / "new").exists()


def test_failed_write_is_one_line_and_leaves_nothing(tmp_path, hub_checkpoint, monkeypatch):
    import mlx_slm.weights

    def disk_full(out_dir, *args, **kwargs):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mlx_slm.weights, "save_weights", disk_full)
    out = tmp_path / "out"
    result = run_convert(hub_checkpoint, out, "--tokenizer", LLAMA2_TOKENIZER)
    assert error_of(result) == (
        f"Error: Writing {out} failed: the disk is full; free some space or choose another "
        "output directory."
    )
    assert not out.exists() and leftovers(tmp_path) == []


def test_sigterm_leaves_nothing(tmp_path, hub_checkpoint):
    """A conversion killed by SIGTERM while writing cleans up after itself."""
    script = (
        "import os, signal, sys, mlx_slm.weights as w\n"
        "def stop(out_dir, *a, **k):\n"
        "    (out_dir / 'model.safetensors').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "w.save_weights = stop\n"
        "from mlx_slm.commands.cli import main\n"
        "main(['convert', sys.argv[1], sys.argv[2], '--tokenizer', sys.argv[3]])\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [os.sys.executable, "-c", script, str(hub_checkpoint), str(out), str(LLAMA2_TOKENIZER)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_leftovers_of_dead_processes_are_removed(tmp_path, hub_checkpoint):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".out.tmp-{os.getppid()}-abcd"
    live.mkdir()
    result = run_convert(hub_checkpoint, tmp_path / "out", "--tokenizer", LLAMA2_TOKENIZER)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists()
