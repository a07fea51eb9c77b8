"""Ctrl-C mid-run leaves a loadable adapter, and --resume reaches the uninterrupted result."""

import json
import signal
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.adapters import ADAPTER_FILE
from mlx_slm.loader import load_model
from tests.finetune_fixtures import write_chat_data, write_tiny_model

STEPS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer_path):
    root = tmp_path_factory.mktemp("ftresume")
    return write_tiny_model(root / "tiny", tiny_tokenizer_path), write_chat_data(root / "data")


def command(model, data, adapter, *extra):
    # Dropout and a batch smaller than the data exercise the seeded draws and batch order.
    return [sys.executable, "-m", "mlx_slm", "finetune", "-m", str(model), "--data", str(data),
            "--adapter-path", str(adapter), "--iters", str(STEPS), "--batch-size", "2",
            "--lr", "2e-3", "--warmup", "5", "--dropout", "0.1", "--steps-per-report", "1",
            "--steps-per-eval", "15", "--save-every", "1000", "--json", *extra]


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, setup):
    model, data = setup
    whole = tmp_path / "whole"
    done = subprocess.run(command(model, data, whole), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr

    parts = tmp_path / "parts"
    proc = subprocess.Popen(command(model, data, parts), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "train" and event["step"] >= 8:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue with --resume" in err and "Traceback" not in err
    stopped = [json.loads(line) for line in rest.splitlines()][-1]
    assert stopped["event"] == "interrupted" and 8 <= stopped["step"] < STEPS

    # What Ctrl-C left is a complete adapter that loads.
    loaded, _ = load_model(model, adapter=parts)
    assert loaded(mx.array([[1, 5, 7]])).shape == (1, 3, 300)

    resumed = subprocess.run(command(model, data, parts, "--resume"), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    first = json.loads(resumed.stdout.splitlines()[0])
    assert first["step"] == stopped["step"] + 1
    ours, theirs = mx.load(str(parts / ADAPTER_FILE)), mx.load(str(whole / ADAPTER_FILE))
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        np.testing.assert_array_equal(np.array(ours[name]), np.array(value), err_msg=name)


def test_resume_refuses_other_settings(tmp_path, setup):
    model, data = setup
    adapter = tmp_path / "a"
    first = command(model, data, adapter)
    first[first.index("--iters") + 1] = "2"
    assert subprocess.run(first, capture_output=True).returncode == 0
    changed = command(model, data, adapter, "--resume", "--rank", "4")
    done = subprocess.run(changed, capture_output=True, text=True)
    assert done.returncode == 1
    assert "rank=8" in done.stderr and "resume with the same settings" in done.stderr


def test_sigterm_saves_the_adapter_so_far(tmp_path, setup):
    model, data = setup
    adapter = tmp_path / "a"
    proc = subprocess.Popen(command(model, data, adapter), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if json.loads(line).get("step", 0) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "continue with --resume" in err
    loaded, _ = load_model(model, adapter=adapter)
    assert loaded(mx.array([[1, 5]])).shape == (1, 2, 300)
