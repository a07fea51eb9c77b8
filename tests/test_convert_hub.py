"""Converting Hub repo ids: huggingface_hub's real cache and offline mode, its errors mapped
to one-line messages, and the tokenizer's resolution. Nothing here touches the network."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import constants
from huggingface_hub.utils import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mlx_slm.chat_format import METADATA_KEY
from mlx_slm.commands.cli import main
from mlx_slm.convert.llama_tokenizer import LLAMA2_SHA256
from mlx_slm.convert.pipeline import convert
from mlx_slm.loader import load
from mlx_slm.store.manifest import MANIFEST_FILE, file_sha256
from mlx_slm.synthetic import tiny_config, write_hub_checkpoint
from mlx_slm.weights import read_config
from tests.conftest import LLAMA2_TOKENIZER
from tests.test_convert import error_of, leftovers

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "apple/OpenELM-270M-Instruct"


@pytest.fixture(autouse=True)
def reachable_hub(monkeypatch):
    """The tests below stand in for the Hub with fakes: the quick connection check passes.
    (The unreachable cases run in a subprocess, where this does not apply.)"""
    import mlx_slm.convert.hub as hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: True)


def fake_repo(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """A repo in huggingface_hub's cache layout: snapshots/<commit>/... and refs/main."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, path in files.items():
        shutil.copyfile(path, snapshot / name)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def hub_files(checkpoint: Path) -> dict[str, Path]:
    return {p.name: p for p in checkpoint.iterdir() if p.is_file()}


def use_offline_cache(monkeypatch, cache: Path) -> None:
    """What HF_HUB_CACHE=cache HF_HUB_OFFLINE=1 does (huggingface_hub reads them at import)."""
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def add_tokenizer_repo(cache: Path, repo_id: str = "NousResearch/Llama-2-7b-hf") -> None:
    fake_repo(cache, repo_id, {"tokenizer.model": LLAMA2_TOKENIZER}, commit="f" * 40)


def run_convert(*args):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def test_converts_from_the_hub_cache_offline(tmp_path, monkeypatch, hub_checkpoint):
    cache = tmp_path / "hf"
    use_offline_cache(monkeypatch, cache)
    fake_repo(cache, REPO, hub_files(hub_checkpoint))
    add_tokenizer_repo(cache)
    out = tmp_path / "out"
    result = run_convert(REPO, out)
    assert result.exit_code == 0, result.output
    assert f"Converted {REPO} (revision {COMMIT[:12]})" in result.output
    assert "from NousResearch/Llama-2-7b-hf" in result.output
    meta = read_config(out)[METADATA_KEY]
    assert meta["source"] == REPO and meta["revision"] == COMMIT
    assert meta["instruct"] is True and meta["tokenizer_sha256"] == LLAMA2_SHA256
    model, tokenizer = load(out)
    assert tokenizer.encode("The capital of California is")[1:] == [450, 7483, 310, 8046, 338]


def test_sharded_repo_from_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    use_offline_cache(monkeypatch, cache)
    checkpoint = write_hub_checkpoint(tmp_path / "src", tiny_config(), seed=2,
                                      max_shard_bytes=500_000)
    fake_repo(cache, "apple/OpenELM-3B", hub_files(checkpoint))
    out = tmp_path / "out"
    result = run_convert("apple/OpenELM-3B", out, "--tokenizer", LLAMA2_TOKENIZER)
    assert result.exit_code == 0, result.output
    assert read_config(out)[METADATA_KEY]["instruct"] is False
    load(out)


def test_offline_with_an_empty_cache(tmp_path, monkeypatch):
    use_offline_cache(monkeypatch, tmp_path / "hf")
    out = tmp_path / "out"
    assert error_of(run_convert(REPO, out)) == (
        f"Error: {REPO} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: unset "
        "HF_HUB_OFFLINE to download it, or pass a local directory."
    )
    assert not out.exists() and leftovers(tmp_path) == []


def test_environment_variables_reach_huggingface_hub(tmp_path, hub_checkpoint):
    """HF_HUB_CACHE and HF_HUB_OFFLINE as a user sets them, in a fresh process."""
    cache = tmp_path / "hf"
    fake_repo(cache, REPO, hub_files(hub_checkpoint))
    add_tokenizer_repo(cache)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mlx_slm", "convert", REPO, str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_config(out)[METADATA_KEY]["revision"] == COMMIT


def test_unreachable_hub(tmp_path):
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "mlx_slm", "convert", REPO, str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        f"Error: Cannot reach the Hugging Face Hub for {REPO}, and it is not in the local "
        "cache: check your connection (or HF_ENDPOINT), or pass a local directory."
    )
    assert not out.exists()


def test_an_unreachable_hub_fails_fast_and_quietly_without_a_tokenizer(tmp_path, hub_checkpoint):
    import time

    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mlx_slm", "convert", str(hub_checkpoint),
                           str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert time.perf_counter() - start < 15  # huggingface_hub's retries took ~50 s
    assert proc.returncode == 1 and "Retrying" not in proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("Error: No Llama-2 tokenizer could be had (meta-llama/"
                                  "Llama-2-7b-hf: Hub unreachable, not cached;")


def test_an_unreachable_hub_still_serves_its_cache(tmp_path, hub_checkpoint):
    cache = tmp_path / "hf"
    fake_repo(cache, REPO, hub_files(hub_checkpoint))
    add_tokenizer_repo(cache)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "0",
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "mlx_slm", "convert", REPO,
                           str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_config(tmp_path / "out")[METADATA_KEY]["revision"] == COMMIT


def http_error(cls, status: int):
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize(
    "error, message",
    [
        (http_error(GatedRepoError, 403),
         f"{REPO} is gated: request access at https://huggingface.co/{REPO}, then set HF_TOKEN "
         "to a token of the account that has it."),
        (http_error(RepositoryNotFoundError, 404),
         f"{REPO} was not found on the Hub: check the name, or set HF_TOKEN if it is a private "
         "repo you can read."),
        (http_error(RevisionNotFoundError, 404),
         f"{REPO} has no revision 'v9': check --revision (a branch, tag or commit)."),
        (LocalEntryNotFoundError("Cannot find the requested files\nin the disk cache"),
         f"Cannot reach the Hugging Face Hub for {REPO} at revision 'v9', and it is not in the "
         "local cache: check your connection (or HF_ENDPOINT), or pass a local directory."),
        (http_error(HfHubHTTPError, 401),
         f"The Hub refused the token for {REPO} (HTTP 401): set HF_TOKEN to a valid token, or "
         "unset it."),
        (http_error(HfHubHTTPError, 503),
         f"The Hub answered HTTP 503 for {REPO}: try again later, or pass a local directory."),
        (ConnectionResetError(104, "Connection reset by peer"),
         f"Downloading from {REPO} failed: Connection reset by peer."),
    ],
)
def test_hub_errors_are_one_line(tmp_path, monkeypatch, error, message):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    out = tmp_path / "out"
    assert error_of(run_convert(REPO, out, "--revision", "v9")) == f"Error: {message}"
    assert not out.exists() and leftovers(tmp_path) == []


def test_tokenizer_falls_back_from_the_gated_repo(tmp_path, monkeypatch, hub_checkpoint):
    asked = []

    def download(repo_id, filename, revision=None):
        asked.append(repo_id)
        if repo_id == "meta-llama/Llama-2-7b-hf":
            raise http_error(GatedRepoError, 403)
        return str(LLAMA2_TOKENIZER)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    result = run_convert(hub_checkpoint, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert asked == ["meta-llama/Llama-2-7b-hf", "NousResearch/Llama-2-7b-hf"]
    assert "from NousResearch/Llama-2-7b-hf" in result.output


def test_no_tokenizer_anywhere(tmp_path, monkeypatch, hub_checkpoint):
    def download(repo_id, filename, revision=None):
        if repo_id == "meta-llama/Llama-2-7b-hf":
            raise http_error(GatedRepoError, 403)
        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "out"
    assert error_of(run_convert(hub_checkpoint, out)) == (
        "Error: No Llama-2 tokenizer could be had (meta-llama/Llama-2-7b-hf: gated, no access; "
        "NousResearch/Llama-2-7b-hf: offline, not cached), and OpenELM checkpoints ship none: "
        "pass --tokenizer PATH (the Llama-2 tokenizer.model, sha256 9e556afd...) or "
        "--tokenizer REPO (a Hub repo holding it, e.g. NousResearch/Llama-2-7b-hf), or request "
        "access to meta-llama/Llama-2-7b-hf at https://huggingface.co/meta-llama/Llama-2-7b-hf "
        "and set HF_TOKEN."
    )
    assert not out.exists() and leftovers(tmp_path) == []


def test_tokenizer_from_a_repo_id(tmp_path, monkeypatch, hub_checkpoint):
    cache = tmp_path / "hf"
    use_offline_cache(monkeypatch, cache)
    add_tokenizer_repo(cache, "someone/llama-tokenizer")
    result = run_convert(hub_checkpoint, tmp_path / "out", "--tokenizer", "someone/llama-tokenizer")
    assert result.exit_code == 0, result.output
    assert "from someone/llama-tokenizer" in result.output


def test_tokenizer_repo_without_the_file(tmp_path, monkeypatch, hub_checkpoint):
    cache = tmp_path / "hf"
    use_offline_cache(monkeypatch, cache)
    fake_repo(cache, "someone/empty", {"config.json": hub_checkpoint / "config.json"})
    assert error_of(run_convert(hub_checkpoint, tmp_path / "o", "--tokenizer", "someone/empty")) \
        == ("Error: tokenizer.model of someone/empty is not in the Hugging Face cache and "
            "HF_HUB_OFFLINE is set: unset HF_HUB_OFFLINE to download it, or pass a local "
            "directory.")


MLX_REPO = "mlx-community/OpenELM-270M-Instruct-4bit"


def add_mlx_community_repo(cache: Path, hub_checkpoint: Path, work: Path) -> dict:
    """An mlx-community style repo: 4-bit MLX weights, its tokenizer, no metadata of ours."""
    mlx_dir = work / "mlx-community"
    convert(hub_checkpoint, mlx_dir, tokenizer=str(LLAMA2_TOKENIZER), quantize=True,
            q_group_size=32, log=lambda _: None)
    config = read_config(mlx_dir)
    del config[METADATA_KEY]
    (mlx_dir / "config.json").write_text(json.dumps(config))
    fake_repo(cache, MLX_REPO, {k: v for k, v in hub_files(mlx_dir).items()
                                if k != MANIFEST_FILE})
    return config


def test_mlx_repo_brings_its_own_tokenizer(tmp_path, monkeypatch, hub_checkpoint):
    cache = tmp_path / "hf"
    use_offline_cache(monkeypatch, cache)
    config = add_mlx_community_repo(cache, hub_checkpoint, tmp_path)
    out = tmp_path / "out"
    result = run_convert(MLX_REPO, out)
    assert result.exit_code == 0, result.output  # no tokenizer repo in the cache: not needed
    assert "4-bit, group size 32" in result.output and "Instruct (chat format on)" in result.output
    assert f"models--mlx-community--OpenELM-270M-Instruct-4bit/snapshots/{COMMIT}" in result.output
    assert read_config(out)["quantization"] == config["quantization"]
    assert read_config(out)[METADATA_KEY]["instruct"] is True
    load(out)


def test_a_tokenizer_with_the_wrong_hash(tmp_path, hub_checkpoint):
    other = tmp_path / "tokenizer.model"
    data = LLAMA2_TOKENIZER.read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))

    out = tmp_path / "out"
    assert error_of(run_convert(hub_checkpoint, out, "--tokenizer", other)) == (
        f"Error: The tokenizer from {other} has sha256 {file_sha256(other)}, not the Llama-2 "
        f"tokenizer's {LLAMA2_SHA256}; OpenELM needs that exact file: pass --tokenizer PATH "
        "(the Llama-2 tokenizer.model, sha256 9e556afd...) or --tokenizer REPO (a Hub repo "
        "holding it, e.g. NousResearch/Llama-2-7b-hf), or request access to "
        "meta-llama/Llama-2-7b-hf at https://huggingface.co/meta-llama/Llama-2-7b-hf and set "
        "HF_TOKEN."
    )
    assert not out.exists()


def test_tokenizer_repo_that_lacks_the_file_online(tmp_path, monkeypatch, hub_checkpoint):
    from huggingface_hub.utils import EntryNotFoundError

    def download(repo_id, filename, revision=None):
        raise EntryNotFoundError(f"404: {filename} not found\nin {repo_id}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    result = run_convert(hub_checkpoint, tmp_path / "o", "--tokenizer", "someone/no-tokenizer")
    assert error_of(result) == "Error: someone/no-tokenizer has no tokenizer.model."
