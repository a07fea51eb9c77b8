"""Conversion under faults: killed at any point (SIGINT, SIGKILL), a full disk, two writers at
once. Real conversions run in subprocesses under tests/fault_launcher.py, which stops them at
named points, so every kill lands where intended without sleeping."""

import errno
import os
import re
import select
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlx_slm.convert.pipeline as pipeline
from mlx_slm.commands.cli import main
from mlx_slm.convert import auto
from mlx_slm.errors import SlmError
from mlx_slm.loader import load
from mlx_slm.store.manifest import manifest_problem
from mlx_slm.weights import read_config, read_headers
from tests.conftest import LLAMA2_TOKENIZER
from tests.test_convert import error_of, leftovers
from tests.test_convert_auto import flip_a_byte
from tests.test_convert_hub import REPO, add_tokenizer_repo, fake_repo, hub_files
from tests.test_convert_hub import use_offline_cache as offline_cache

LAUNCHER = Path(__file__).with_name("fault_launcher.py")
TIMEOUT = 60  # seconds; each conversion here takes well under one
SHARD_BYTES = 40_000  # the tiny model's float16 weights in eight files
TENSOR_DTYPES = {"float16": "F16", "float32": "F32"}


class Child:
    """A conversion under the launcher: read the points it passes, let it go, or kill it."""

    def __init__(self, command, pauses=(), env=None, options=()):
        report_r, report_w = os.pipe()
        go_r, self.go_w = os.pipe()
        args = [sys.executable, str(LAUNCHER), "--report", str(report_w), "--go", str(go_r),
                *options]
        for point in pauses:
            args += ["--pause", point]
        self.proc = subprocess.Popen(
            [*args, "--", *map(str, command)], pass_fds=(report_w, go_r), env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        os.close(report_w)
        os.close(go_r)
        self.report_r, self.buffer, self.passed = report_r, b"", []

    def next_point(self) -> str | None:
        """The next point it passes; None once it has exited."""
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.report_r], [], [], TIMEOUT)
            assert ready, f"no report for {TIMEOUT} s after {self.passed}"
            chunk = os.read(self.report_r, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.passed.append(line.decode())
        return self.passed[-1]

    def reach(self, point: str) -> None:
        """Read its reports up to `point` (where it waits, if told to pause there)."""
        while (name := self.next_point()) != point:
            assert name is not None, f"exited before {point}: {self.finish()}"

    def drain(self) -> list[str]:
        """The points it passes from here until it exits."""
        points = []
        while (name := self.next_point()) is not None:
            points.append(name)
        return points

    def resume(self) -> None:
        os.write(self.go_w, b"g")

    def kill(self, signum: int):
        self.proc.send_signal(signum)
        return self.finish()

    def finish(self):
        """(exit code, stdout, stderr) once it has exited."""
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        for fd in (self.report_r, self.go_w):
            with suppress(OSError):
                os.close(fd)


@pytest.fixture
def spawn():
    """Start launcher children; any left running by a failed test is killed."""
    children = []

    def start(*args, **kwargs) -> Child:
        children.append(Child(*args, **kwargs))
        return children[-1]

    yield start
    for child in children:
        child.close()


def convert_args(source, out, *extra):
    return ["convert", source, out, "--tokenizer", LLAMA2_TOKENIZER,
            "--max-shard-size", SHARD_BYTES, *extra]


def quiet(_):
    pass


def rerun(source, out, **kwargs):
    return pipeline.convert(source, out, tokenizer=str(LLAMA2_TOKENIZER),
                            max_shard_bytes=SHARD_BYTES, log=quiet, **kwargs)


def visible(parent: Path) -> list[str]:
    """What a user sees in `parent` (nothing if it does not exist)."""
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))


def tensor_dtypes(model_dir: Path) -> set[str]:
    return {entry["dtype"] for entry in read_headers(model_dir).values()}


def assert_complete(model_dir: Path, dtype: str) -> None:
    """Every file matches the manifest (re-hashed) and every tensor has `dtype`."""
    assert manifest_problem(model_dir, deep=True) is None
    assert read_config(model_dir)["torch_dtype"] == dtype
    assert tensor_dtypes(model_dir) == {TENSOR_DTYPES[dtype]}
    load(model_dir)


def assert_interrupted(code, err):
    assert code == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "Interrupted."


# --- killed at any point ------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
@pytest.mark.parametrize("point", ["tokenizer", "shard:2", "manifest", "rename"])
def test_killed_conversion_leaves_no_output_and_a_rerun_completes(
        tmp_path, hub_checkpoint, spawn, point, signum):
    parent = tmp_path / "made"  # made by the conversion
    out = parent / "out"
    child = spawn(convert_args(hub_checkpoint, out), pauses=[point])
    child.reach(point)
    code, _, err = child.kill(signum)
    assert not out.exists()
    if signum == signal.SIGINT:
        assert_interrupted(code, err)
        assert not parent.exists()  # cleaned up, the parent it made included
    else:
        assert code == -signal.SIGKILL
        assert visible(parent) == []  # at most hidden leftovers, which the next write removes
    rerun(hub_checkpoint, out)
    assert os.listdir(parent) == ["out"]
    assert_complete(out, "float16")


@pytest.mark.parametrize("point, signum, survivor", [
    ("rename", signal.SIGKILL, "float32"),  # before the swap: the old directory
    ("rename", signal.SIGINT, "float32"),
    ("swapped", signal.SIGKILL, "float16"),  # after it: the new one
    ("swapped", signal.SIGINT, "float16"),
])
def test_killed_forced_replacement_keeps_the_old_or_the_new(
        tmp_path, hub_checkpoint, spawn, point, signum, survivor):
    out = tmp_path / "out"
    rerun(hub_checkpoint, out, dtype="float32")
    child = spawn(convert_args(hub_checkpoint, out, "--force", "--dtype", "float16"),
                  pauses=[point])
    child.reach(point)
    code, _, err = child.kill(signum)
    if signum == signal.SIGINT:
        assert_interrupted(code, err)
        assert leftovers(tmp_path) == []
    assert_complete(out, survivor)
    rerun(hub_checkpoint, out, dtype="float16", force=True)
    assert os.listdir(tmp_path) == ["out"]
    assert_complete(out, "float16")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_replacement_in_two_renames_puts_the_old_directory_back(
        tmp_path, hub_checkpoint, spawn, signum):
    """Where the file system cannot exchange two directories, a kill between moving the old
    one aside and the new one in leaves the old one aside; the next write puts it back."""
    out = tmp_path / "out"
    rerun(hub_checkpoint, out, dtype="float32")
    child = spawn(convert_args(hub_checkpoint, out, "--force", "--dtype", "float16"),
                  pauses=["moved-aside"], options=["--no-exchange"])
    child.reach("moved-aside")
    code, _, err = child.kill(signum)
    if signum == signal.SIGINT:
        assert_interrupted(code, err)  # put back on the way out
    else:
        assert not out.exists()
        with pytest.raises(SlmError, match="already exists; pass --force"):
            rerun(hub_checkpoint, out, dtype="float16")
    assert os.listdir(tmp_path) == ["out"]
    assert_complete(out, "float32")


# --- the auto-convert cache -----------------------------------------------------------------

@pytest.fixture
def hub_env(tmp_path, monkeypatch, hub_checkpoint):
    """An offline Hub cache holding REPO and the tokenizer, MLX_SLM_HOME in tmp_path: set in
    this process, and returned as the environment for a child."""
    cache = tmp_path / "hf"
    offline_cache(monkeypatch, cache)
    fake_repo(cache, REPO, hub_files(hub_checkpoint))
    add_tokenizer_repo(cache)
    monkeypatch.setenv(auto.HOME_ENV, str(tmp_path / "home"))
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def entry_dir(tmp_path):
    return tmp_path / "home" / "models" / "apple--OpenELM-270M-Instruct"


@pytest.mark.parametrize("point", ["shard:1", "manifest", "rename"])
def test_killed_auto_conversion_is_not_loaded_but_converted_again(
        tmp_path, hub_env, spawn, point):
    entry = entry_dir(tmp_path)
    child = spawn(["auto", REPO], pauses=[point], env=hub_env)
    child.reach(point)
    child.kill(signal.SIGKILL)
    assert not entry.exists()
    messages = []
    assert auto.converted_model_dir(REPO, log=messages.append) == entry
    assert messages[0] == f"[converting {REPO} once into {entry}]"
    assert os.listdir(entry.parent) == [entry.name]
    assert_complete(entry, "float16")


@pytest.mark.parametrize("point, replaced", [("rename", False), ("swapped", True)])
def test_killed_rebuild_of_a_damaged_entry(tmp_path, hub_env, spawn, point, replaced):
    entry = auto.converted_model_dir(REPO, log=quiet)
    flip_a_byte(entry)
    child = spawn(["auto", REPO], pauses=[point], env=hub_env)
    child.reach(point)
    child.kill(signal.SIGKILL)
    messages = []
    assert auto.converted_model_dir(REPO, log=messages.append) == entry
    if replaced:  # the rebuilt entry was in place: reused, the old copy deleted
        assert messages == []
        assert leftovers(entry.parent) == [f".{entry.name}.lock"]  # empty; the next write's
    else:
        assert messages[0].startswith(f"[cached conversion {entry} is damaged (")
        assert leftovers(entry.parent) == []
    assert visible(entry.parent) == [entry.name]
    assert_complete(entry, "float16")


# --- a full disk ----------------------------------------------------------------------------

def test_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, hub_checkpoint, spawn):
    """RLIMIT_FSIZE (SIGXFSZ ignored) makes the write that crosses it fail with EFBIG, as a
    full disk fails with ENOSPC: here after the small shards, at the embedding's."""
    parent = tmp_path / "made"
    out = parent / "out"
    child = spawn(convert_args(hub_checkpoint, out), options=["--max-file-size", "100000"])
    code, _, err = child.finish()
    assert any(point.startswith("shard:") for point in child.drain())  # failed mid-way
    assert code == 1 and "Traceback" not in err, err
    # MLX says how many bytes it could not write (what its buffer held), not why.
    assert re.fullmatch(
        rf"Error: Writing {re.escape(str(out))} failed: Unable to write \d+ bytes to file \(the "
        r"disk is full, or a file is over the size limit\); free some space, raise the limit "
        r"\(ulimit -f\), or choose another output directory\.", err.splitlines()[-1]), err
    assert not parent.exists()


def test_file_size_limit_in_the_auto_cache(tmp_path, hub_env, spawn):
    child = spawn(["auto", REPO], env=hub_env, options=["--max-file-size", "100000"])
    code, out, err = child.finish()
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"Error: Writing {entry_dir(tmp_path)} failed: ")
    assert not (tmp_path / "home").exists()
    assert auto.converted_model_dir(REPO, log=quiet) == entry_dir(tmp_path)
    assert_complete(entry_dir(tmp_path), "float16")


def fail_with(code):
    def write(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return write


@pytest.mark.parametrize("step, code, message", [
    ("write_manifest", errno.ENOSPC,
     "the disk is full; free some space or choose another output directory."),
    ("write_manifest", errno.EDQUOT,
     "the disk is full; free some space or choose another output directory."),
    ("copyfile", errno.EFBIG,
     "a file is over the file-size limit (ulimit -f) or the file system's; raise the limit, "
     "pass a smaller --max-shard-size, or choose another output directory."),
    ("write_manifest", errno.EIO, "Input/output error."),
])
def test_write_errors_are_one_line_and_leave_nothing(
        tmp_path, hub_checkpoint, monkeypatch, step, code, message):
    owner = pipeline.shutil if step == "copyfile" else pipeline
    monkeypatch.setattr(owner, step, fail_with(code))
    out = tmp_path / "made" / "out"
    result = CliRunner().invoke(main, [str(a) for a in convert_args(hub_checkpoint, out)])
    assert error_of(result) == f"Error: Writing {out} failed: {message}"
    assert not (tmp_path / "made").exists()


# --- two writers at once --------------------------------------------------------------------

def race(first: Child, second: Child) -> tuple[Child, Child, str | None]:
    """Hold both at `start` and let them go together: (the one that took the destination's
    lock, the other, the other's next point: None if it exited)."""
    for child in (first, second):
        child.reach("start")
    for child in (first, second):
        child.resume()
    after = {child: child.next_point() for child in (first, second)}
    winners = [child for child, point in after.items() if point == "staged"]
    assert len(winners) == 1, [child.passed for child in (first, second)]
    other = second if winners[0] is first else first
    return winners[0], other, after[other]


def test_two_conversions_to_one_destination(tmp_path, hub_checkpoint, spawn):
    out = tmp_path / "out"
    runs = {dtype: spawn(convert_args(hub_checkpoint, out, "--dtype", dtype),
                         pauses=["start", "staged"]) for dtype in ("float16", "float32")}
    winner, loser, point = race(*runs.values())
    assert point is None  # it stopped before writing anything
    code, _, err = loser.finish()
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"Error: Another conversion is writing {out}; wait for it to finish, or choose another "
        "output directory."
    )
    winner.resume()
    code, stdout, _ = winner.finish()
    assert code == 0 and f"-> {out}" in stdout
    won = next(dtype for dtype, child in runs.items() if child is winner)
    assert os.listdir(tmp_path) == ["out"]
    assert_complete(out, won)


def test_two_auto_conversions_of_one_repo(tmp_path, hub_env, spawn):
    """The second process waits for the first and loads its result rather than converting."""
    first, second = (spawn(["auto", REPO], pauses=["start", "staged"], env=hub_env)
                     for _ in range(2))
    winner, waiter, point = race(first, second)
    assert point == "waiting"
    winner.resume()
    results = [child.finish() for child in (winner, waiter)]
    entry = entry_dir(tmp_path)
    assert [(code, out) for code, out, _ in results] == [(0, f"{entry}\n")] * 2
    assert waiter.drain() == [] and "staged" not in waiter.passed  # it wrote nothing
    assert f"[another process is converting {REPO} into {entry}; waiting for it]" in results[1][2]
    assert os.listdir(entry.parent) == [entry.name]
    assert_complete(entry, "float16")
