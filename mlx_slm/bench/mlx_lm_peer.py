"""mlx-lm's own loader and generation on the same model directory, for ours/theirs ratios.

mlx-lm runs in a child process (`python -m mlx_slm.bench.mlx_lm_peer`), so that a call of
its that runs for minutes (a quantized prompt pass on a slow backend) can be stopped: at
--time-limit, at Ctrl-C or at SIGTERM the child is killed, and a later cell starts a fresh
one. The child streams each token id as it comes; the parent reads the clock on arrival
(a pipe adds tens of microseconds per token). The child also stops a run by itself at the
deadline, after a token, so that it stays usable; it is killed only when one call of
mlx-lm's outlasts the deadline. mlx-lm is imported only when a comparison is asked for.
"""

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from mlx_slm.bench.timing import TimeLimitExceeded
from mlx_slm.errors import SlmError

# How long an abandoned run may take to end before its child is killed.
FINISH_GRACE_S = 5.0
# How long past its deadline a run may take to stop by itself (after its current token)
# before its child is killed.
STOP_GRACE_S = 2.0


class MlxLmEngine:
    """mlx-lm's `load_model` and `generate_step` (which never stops at EOS), in a child."""

    name = "mlx-lm"
    stoppable = True  # `tokens` takes a deadline, and a run past it is killed

    def __init__(self):
        try:
            import mlx_lm  # noqa: F401  (here, for the error; the child imports it again)
        except ImportError:
            raise SlmError("--compare mlx-lm needs mlx-lm: pip install mlx-lm") from None
        self.version = metadata.version("mlx-lm")
        self.child: subprocess.Popen | None = None
        self.pending = b""
        self.streaming = False  # a run's tokens may still be coming
        self.model_dir: Path | None = None

    def load(self, model_dir: Path) -> Path:
        """mlx-lm's model for the directory, in the child (its own class and weight loading)."""
        self.model_dir = Path(model_dir)
        self._start()
        self._ask({"op": "load", "path": str(model_dir)})
        return self.model_dir

    def tokens(self, model: Path, prompt: list[int], n: int,
               deadline: float | None = None) -> Iterator[int]:
        """A lazy generator of `n` greedy token ids after `prompt`; past `deadline` (a
        time.monotonic reading) the child is killed and TimeLimitExceeded raised."""
        # A child killed at a limit is started again by _send, with the model reloaded.
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        self._send({"op": "run", "prompt": prompt, "n": n, "seconds": left})
        self.streaming = True
        return self._stream(None if deadline is None else deadline + STOP_GRACE_S)

    def reset_peaks(self) -> str:
        """Restart the child's MLX and RSS peaks; the scope the next reading covers."""
        return self._ask({"op": "reset_peaks"})["scope"]

    def peaks(self) -> dict:
        """The child's MLX peak and peak RSS since `reset_peaks` (None if it was killed)."""
        if self.streaming:
            self._finish_run()
        if self.child is None:
            return {"peak_memory_bytes": None, "peak_rss_bytes": None}
        reply = self._ask({"op": "peaks"})
        return {key: reply[key] for key in ("peak_memory_bytes", "peak_rss_bytes")}

    def sizes(self, model) -> dict:
        return {}

    def release(self) -> None:
        """Free the model in the child, so that it shares no memory with the next one."""
        if self.streaming:
            self._finish_run()
        if self.child is not None:
            self._ask({"op": "unload"})

    def close(self) -> None:
        """End the child, at once."""
        if self.child is not None:
            self.child.kill()
            self.child.wait()
            self.child = None
            self.pending = b""

    def _start(self) -> None:
        if self.child is not None:
            return
        self.child = subprocess.Popen(
            [sys.executable, "-m", "mlx_slm.bench.mlx_lm_peer"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def _send(self, message: dict) -> None:
        if self.streaming:
            self._finish_run()
        if self.child is None:
            self._start()
            if message["op"] != "load":
                self._ask({"op": "load", "path": str(self.model_dir)})
        try:
            self.child.stdin.write((json.dumps(message) + "\n").encode())
            self.child.stdin.flush()
        except BrokenPipeError:
            self._died()

    def _ask(self, message: dict) -> dict:
        self._send(message)
        return self._receive(None)

    def _stream(self, deadline: float | None) -> Iterator[int]:
        while True:
            reply = self._receive(deadline)
            if "token" in reply:
                yield reply["token"]
                continue
            self.streaming = False
            if "stopped" in reply:
                raise TimeLimitExceeded("mlx-lm's run went past its deadline")
            return

    def _finish_run(self) -> None:
        """Read what is left of an abandoned run (the child stops at its deadline by itself);
        kill the child if it does not end soon."""
        grace = time.monotonic() + FINISH_GRACE_S
        try:
            while "token" in self._receive(grace):
                pass
        except TimeLimitExceeded:
            pass  # killed: the next request starts a fresh child
        self.streaming = False

    def _receive(self, deadline: float | None) -> dict:
        """The child's next message; its error as an SlmError; past `deadline`, kill it."""
        while b"\n" not in self.pending:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0)
            ready, _, _ = select.select([self.child.stdout], [], [], wait)
            if not ready:
                self.close()
                self.streaming = False
                raise TimeLimitExceeded("mlx-lm's call went past the time limit; stopped")
            chunk = os.read(self.child.stdout.fileno(), 1 << 16)
            if not chunk:
                self._died()
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise SlmError(reply["error"])
        return reply

    def _died(self):
        code = self.child.wait()
        self.child = None
        self.pending = b""
        self.streaming = False
        raise SlmError(f"mlx-lm's process ended unexpectedly (exit code {code})")


def serve() -> None:
    """The child: answer the parent's requests, one JSON line each, until stdin closes."""
    import gc
    import signal

    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    from mlx_slm.memory import mlx_peak_bytes, peak_rss_bytes, reset_mlx_peak, restart_peak_rss

    # The parent stops this process by killing it; Ctrl-C at a terminal ends it at once.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    out = sys.stdout

    def reply(message: dict) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    model = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "load":
                model = load_model(Path(request["path"]))[0]
                reply({"loaded": True})
            elif op == "run":
                seconds = request["seconds"]
                stop_at = None if seconds is None else time.monotonic() + seconds
                steps = generate_step(mx.array(request["prompt"], mx.uint32), model,
                                      max_tokens=request["n"])
                for token, _ in steps:
                    reply({"token": int(token)})
                    if stop_at is not None and time.monotonic() > stop_at:
                        reply({"stopped": True})
                        break
                else:
                    reply({"done": True})
            elif op == "reset_peaks":
                reset_mlx_peak()
                reply({"scope": restart_peak_rss()})
            elif op == "peaks":
                reply({"peak_memory_bytes": mlx_peak_bytes(),
                       "peak_rss_bytes": peak_rss_bytes()})
            elif op == "unload":
                model = None
                gc.collect()
                mx.clear_cache()
                reply({"unloaded": True})
        except (SlmError, RuntimeError, MemoryError, ValueError, OSError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            reply({"error": f"mlx-lm: {first}"})


if __name__ == "__main__":
    serve()
