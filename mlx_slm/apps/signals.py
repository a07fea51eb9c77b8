"""SIGTERM during a generation ends it the way Ctrl-C does: the text so far, then the stats."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; caught wherever Ctrl-C is, and told apart for the exit code (143)."""


class SigtermWatch:
    """Whether SIGTERM arrived, for code that catches Terminated as a KeyboardInterrupt."""

    received = False


@contextmanager
def sigterm_as_interrupt() -> Iterator[SigtermWatch]:
    """Within the block SIGTERM raises Terminated (main thread only; elsewhere a no-op)."""
    watch = SigtermWatch()
    if threading.current_thread() is not threading.main_thread():
        yield watch
        return

    def handler(signum, frame):
        watch.received = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield watch
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_exit_code(stop: KeyboardInterrupt) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
