"""mlx-lm as the benchmark's peer runs in a child process that --time-limit, Ctrl-C and
SIGTERM can stop, even in the middle of one of mlx-lm's calls (issue 13)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlx_slm.bench.timing import TimeLimitExceeded

pytest.importorskip("mlx_lm")

PROMPT = [1, 450, 7483, 310]


@pytest.fixture(scope="module")
def engine():
    """One peer for the module: starting mlx-lm's child costs seconds (its imports)."""
    from mlx_slm.bench.mlx_lm_peer import MlxLmEngine

    peer = MlxLmEngine()
    yield peer
    peer.close()


def test_the_peer_gives_mlx_lms_greedy_tokens(engine, model_dir):
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    model = engine.load(model_dir)
    engine.reset_peaks()
    got = list(engine.tokens(model, PROMPT, 5))
    theirs = load_model(Path(model_dir))[0]
    expected = [int(t) for t, _ in generate_step(mx.array(PROMPT, mx.uint32), theirs,
                                                 max_tokens=5)]
    assert got == expected
    peaks = engine.peaks()
    assert peaks["peak_memory_bytes"] > 0 and peaks["peak_rss_bytes"] > 0


def test_a_call_past_the_deadline_is_killed_and_the_next_run_starts_afresh(engine, model_dir):
    model = engine.load(model_dir)
    first = engine.child.pid
    from mlx_slm.bench.mlx_lm_peer import STOP_GRACE_S

    # Due, grace included, before the first token: as when one prompt pass outlasts it.
    with pytest.raises(TimeLimitExceeded):
        list(engine.tokens(model, PROMPT, 5, deadline=time.monotonic() - STOP_GRACE_S))
    assert engine.child is None
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
    assert engine.peaks() == {"peak_memory_bytes": None, "peak_rss_bytes": None}
    assert len(list(engine.tokens(model, PROMPT, 3))) == 3  # a fresh child, reloaded


def test_a_long_run_stops_itself_at_the_deadline_and_the_child_stays(engine, model_dir):
    model = engine.load(model_dir)
    child = engine.child.pid
    start = time.monotonic()
    count = 0
    with pytest.raises(TimeLimitExceeded):
        for _ in engine.tokens(model, PROMPT, 2000, deadline=start + 0.5):
            count += 1
    assert 0 < count < 2000 and time.monotonic() - start < 5
    assert engine.child.pid == child and engine.peaks()["peak_memory_bytes"] > 0


def peer_processes(mark: str) -> list[int]:
    """Live processes whose environment carries `mark` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_bench_while_mlx_lm_runs(tmp_path, model_dir, sig, code):
    mark = f"MLX_SLM_TEST_MARK={uuid.uuid4()}"
    env = {**os.environ, mark.split("=")[0]: mark.split("=")[1]}
    bench = subprocess.Popen(
        [sys.executable, "-m", "mlx_slm", "bench", "-m", str(model_dir), "--compare", "mlx-lm",
         "-p", "8", "-n", "2000", "-r", "3", "--warmup", "0", "--bandwidth", "10",
         "--time-limit", "5"],  # ours stops at 5 s; mlx-lm is signalled within its 5 s
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    for line in bench.stderr:  # one progress line per step when stderr is not a terminal
        if b"[mlx-lm] prompt" in line:
            break
    time.sleep(0.5)
    assert len(peer_processes(mark)) == 2  # bench and mlx-lm's child
    sent = time.monotonic()
    bench.send_signal(sig)
    _, err = bench.communicate(timeout=30)
    assert time.monotonic() - sent < 10
    assert bench.returncode == code and b"Traceback" not in err
    assert b"[interrupted: 0 cell(s) completed]" in err
    assert peer_processes(mark) == []
