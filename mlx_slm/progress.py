"""Progress on stderr for work that takes more than a second or so: tqdm bars (which
huggingface_hub's download bars use too), shown on a terminal only so logs stay clean, and
the benchmark's one-line status."""

import sys


def progress_bar(total: int, what: str, unit: str = "it", stream=None):
    """A tqdm bar of `total` units; `.update(n)` advances it, `.close()` clears it."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    live = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "B", file=stream,
                leave=False, disable=not live, dynamic_ncols=True)


class ProgressLine:
    """Redrawn in place on a terminal; elsewhere (a log, CI) one line per update."""

    def __init__(self, stream=None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.drawn = False

    def __call__(self, done: int, total: int, what: str) -> None:
        filled = self.width * done // max(total, 1)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} cells | {what}"
        if self.live:
            self.stream.write("\r\x1b[K" + line)
            self.drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Clear the live line, so what follows starts on a clean one."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
