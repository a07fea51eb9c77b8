"""`generate --model REPO`: converted once into the cache, reused, rebuilt when damaged."""

import json

import pytest
from click.testing import CliRunner

import mlx_slm.convert.auto as auto
from mlx_slm.chat_format import METADATA_KEY
from mlx_slm.commands.cli import main
from mlx_slm.store.manifest import MANIFEST_FILE, manifest_problem
from mlx_slm.weights import read_config
from tests.test_convert_hub import (
    COMMIT,
    MLX_REPO,
    REPO,
    add_mlx_community_repo,
    add_tokenizer_repo,
    fake_repo,
    hub_files,
)
from tests.test_convert_hub import use_offline_cache as offline_cache


@pytest.fixture
def hub(tmp_path, monkeypatch, hub_checkpoint):
    """An offline Hub cache holding REPO and the tokenizer; MLX_SLM_HOME in tmp_path."""
    cache = tmp_path / "hf"
    offline_cache(monkeypatch, cache)
    fake_repo(cache, REPO, hub_files(hub_checkpoint))
    add_tokenizer_repo(cache)
    monkeypatch.setenv(auto.HOME_ENV, str(tmp_path / "home"))
    return cache


def entry_dir(tmp_path):
    return tmp_path / "home" / "models" / "apple--OpenELM-270M-Instruct"


def test_converted_once_then_reused(tmp_path, hub, monkeypatch):
    messages = []
    first = auto.converted_model_dir(REPO, log=messages.append)
    assert first == entry_dir(tmp_path)
    assert messages[0] == f"[converting {REPO} once into {first}]"
    assert manifest_problem(first) is None
    meta = read_config(first)[METADATA_KEY]
    assert meta["source"] == REPO and meta["revision"] == COMMIT and meta["instruct"] is True

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(auto, "convert", must_not_convert)
    assert auto.converted_model_dir(REPO) == first


def flip_a_byte(entry):
    path = entry / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(entry):
    path = entry / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def drop(name):
    return lambda entry: (entry / name).unlink()


def stray_shard(entry):
    (entry / "model-00002-of-00002.safetensors").write_bytes(b"x")


def garbled_manifest(entry):
    (entry / MANIFEST_FILE).write_text("{not json")


@pytest.mark.parametrize(
    "damage, problem",
    [
        (flip_a_byte, "model.safetensors is corrupt (sha256 mismatch)"),
        (truncate, "model.safetensors has"),
        (drop("tokenizer.model"), "tokenizer.model is missing"),
        (drop("config.json"), "config.json is missing"),
        (drop(MANIFEST_FILE), "no manifest (an interrupted conversion)"),
        (garbled_manifest, "unreadable manifest"),
        (stray_shard, "unexpected file model-00002-of-00002.safetensors"),
    ],
)
def test_damaged_entry_is_rebuilt(tmp_path, hub, damage, problem):
    entry = auto.converted_model_dir(REPO, log=lambda _: None)
    damage(entry)
    assert problem in manifest_problem(entry)
    messages = []
    assert auto.converted_model_dir(REPO, log=messages.append) == entry
    assert messages[0].startswith(f"[cached conversion {entry} is damaged ({problem}")
    assert manifest_problem(entry) is None
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]


def test_half_written_entry_of_a_killed_process_is_cleaned(tmp_path, hub):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    models = entry_dir(tmp_path).parent
    stale = models / f".{entry_dir(tmp_path).name}.tmp-{dead.pid}-0000"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    auto.converted_model_dir(REPO, log=lambda _: None)
    assert sorted(p.name for p in models.iterdir()) == [entry_dir(tmp_path).name]


def test_revision_gets_its_own_entry(monkeypatch, tmp_path):
    monkeypatch.setenv(auto.HOME_ENV, str(tmp_path))
    assert auto.cache_root() == tmp_path / "models"
    assert auto.entry_name("apple/OpenELM-3B", "v1.0/x") == "apple--OpenELM-3B@v1.0_x"
    monkeypatch.delenv(auto.HOME_ENV)
    assert auto.cache_root().parts[-3:] == (".cache", "mlx-slm", "models")


def test_generate_with_a_repo_id(tmp_path, hub):
    args = ["generate", "-m", REPO, "-p", "Hello", "-n", "3", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["chat_format"] is True and report["dtype"] == "float16"
    assert f"[converting {REPO} once into {entry_dir(tmp_path)}]" in result.stderr
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "converting" not in again.stderr
    assert json.loads(again.stdout)["tokens"] == report["tokens"]


def test_generate_with_an_unknown_repo_offline(tmp_path, hub):
    result = CliRunner().invoke(main, ["generate", "-m", "apple/OpenELM-450M", "-n", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] == (
        "Error: apple/OpenELM-450M is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
        "unset HF_HUB_OFFLINE to download it, or pass a local directory."
    )
    assert not (tmp_path / "home" / "models" / "apple--OpenELM-450M").exists()


def test_generate_with_an_mlx_community_repo(tmp_path, hub, hub_checkpoint):
    add_mlx_community_repo(hub, hub_checkpoint, tmp_path)
    result = CliRunner().invoke(main, ["generate", "-m", MLX_REPO, "-p", "Hi", "-n", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["chat_format"] is True and report["quantization"]["bits"] == 4


def test_unchanged_files_are_not_rehashed_but_a_deep_check_rehashes(tmp_path, hub, monkeypatch):
    import os

    import mlx_slm.store.manifest as manifest

    entry = auto.converted_model_dir(REPO, log=lambda _: None)
    hashed = []
    real = manifest.file_sha256
    monkeypatch.setattr(manifest, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    assert manifest_problem(entry) is None and hashed == []  # start-up cost: stat calls only
    weights = entry / "model.safetensors"
    stat = weights.stat()
    flip_a_byte(entry)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a write that hid its trace
    assert manifest_problem(entry) is None
    assert manifest_problem(entry, deep=True) == "model.safetensors is corrupt (sha256 mismatch)"
