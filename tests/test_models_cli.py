"""`mlx-slm models`, `models rm` and `models pull` on a fake cache home and an offline Hub."""

import json

import pytest
from click.testing import CliRunner

import mlx_slm.convert.auto as auto
from mlx_slm.commands.cli import main
from mlx_slm.store.staging import destination_lock
from tests.test_convert_auto import entry_dir, hub  # noqa: F401  (the fixture)
from tests.test_convert_hub import REPO

pytestmark = pytest.mark.usefixtures("hub")  # an offline Hub; MLX_SLM_HOME in tmp_path


def run(*args, input=None):
    return CliRunner().invoke(main, ["models", *map(str, args)], input=input)


def test_an_empty_cache_says_how_to_fill_it():
    result = run()
    assert result.exit_code == 0 and result.output.startswith("No models in the cache yet")
    assert json.loads(run("--json").output)["models"] == []


def test_pull_converts_once_into_the_cache_and_generate_reuses_it(tmp_path, monkeypatch):
    entry = entry_dir(tmp_path)
    result = run("pull", REPO)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Pulled {REPO} into {entry}\n"
    again = run("pull", REPO)
    assert again.exit_code == 0 and "is already in the cache" in again.stdout
    assert run("pull", REPO, "-q").stdout == f"{entry}\n"

    def must_not_convert(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(auto, "convert", must_not_convert)
    used = CliRunner().invoke(main, ["generate", "-m", REPO, "-p", "Hi", "-n", "2"])
    assert used.exit_code == 0, used.output
    assert "converting" not in used.stderr


def test_pull_refuses_a_local_directory(tmp_path):
    result = run("pull", tmp_path)
    assert result.exit_code == 1 and "is not a Hub repo id" in result.output
    assert not (tmp_path / "home" / "models").exists()


def test_the_listing_shows_what_each_entry_is(tmp_path):
    assert run("pull", REPO).exit_code == 0
    entry = entry_dir(tmp_path)
    listing = run()
    assert listing.exit_code == 0, listing.output
    header, rule, row = listing.stdout.splitlines()
    assert header.split() == ["model", "precision", "size", "created", "last", "used",
                              "instruct"]
    assert row.split()[:2] == [REPO, "float16"] and row.endswith("yes")
    assert "just now" in row
    report = json.loads(run("--json").stdout)
    [model] = report["models"]
    size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
    assert model["repo_id"] == REPO and model["size_bytes"] == size
    assert model["instruct"] is True and model["problem"] is None
    assert model["created"] <= model["last_used"]
    (entry / "model.safetensors").write_bytes(b"x")  # damaged: listed, with what happens
    assert "will be converted again on its next use" in run().stdout


def test_rm_asks_first_and_removes_only_when_told(tmp_path):
    assert run("pull", REPO).exit_code == 0
    entry = entry_dir(tmp_path)
    declined = run("rm", REPO, input="n\n")
    assert declined.exit_code == 1 and "Nothing removed." in declined.stderr
    assert entry.is_dir()
    no_answer = run("rm", REPO, input="")
    assert no_answer.exit_code == 1 and entry.is_dir()
    agreed = run("rm", entry.name, input="y\n")
    assert agreed.exit_code == 0, agreed.output
    assert agreed.stdout == f"Removed {REPO} ({entry})\n" and not entry.exists()
    assert run("pull", REPO).exit_code == 0
    assert run("rm", REPO, "-y").exit_code == 0 and not entry.exists()
    assert run().output.startswith("No models in the cache yet")


def test_rm_of_an_unknown_name_suggests_the_closest(tmp_path):
    assert run("pull", REPO).exit_code == 0
    result = run("rm", REPO.lower() + "x", "-y")
    assert result.exit_code == 1
    assert result.output == (f"Error: No cached model {REPO.lower()}x (did you mean {REPO}?); "
                             "`mlx-slm models` lists them.\n")
    assert entry_dir(tmp_path).is_dir()


def test_rm_refuses_a_model_that_a_process_is_writing(tmp_path):
    assert run("pull", REPO).exit_code == 0
    entry = entry_dir(tmp_path)
    with destination_lock(entry):  # what a converting process holds
        result = run("rm", REPO, "-y")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("is being written by another process; wait for it "
                                          "to finish, then remove it.")
    assert entry.is_dir() and run("rm", REPO, "-y").exit_code == 0
