"""Progress on stderr for long work (issue 13): scoring and weight writing report as they go,
the bar shows on a terminal only, and Ctrl-C during a write is answered between tensors."""

import io

import mlx.core as mx
import pytest

from mlx_slm.apps.quality import score
from mlx_slm.progress import progress_bar
from mlx_slm.weights import save_weights
from tests.test_quality import BigramModel


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_shows_on_a_terminal_only():
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        with progress_bar(10, "Scoring", unit="tok", stream=stream) as bar:
            bar.update(4)
        assert ("Scoring" in stream.getvalue()) is shown


def test_scoring_reports_every_token_in_chunks():
    import numpy as np

    done = []
    ids = list(range(2, 40))
    score(BigramModel(np.zeros((50, 50))), ids, 1, window=16, chunk=5, on_progress=done.append)
    assert sum(done) == len(ids) and max(done) == 5 and len(done) > 4


def test_writing_reports_each_tensor_and_stops_between_tensors(tmp_path):
    weights = {f"w{i}": mx.full((64, 64), i, mx.float32).astype(mx.float16) for i in range(6)}
    done = []
    files = save_weights(tmp_path, weights, max_shard_bytes=3 * 64 * 64 * 2,
                         on_progress=done.append)
    assert len(files) == 2 and done == [a.nbytes for a in weights.values()]

    def interrupt(nbytes):
        raise KeyboardInterrupt

    out = tmp_path / "stopped"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        save_weights(out, weights, max_shard_bytes=3 * 64 * 64 * 2, on_progress=interrupt)
    assert list(out.iterdir()) == []  # stopped after the first tensor, before any file
