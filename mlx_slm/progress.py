"""Progress bars on stderr for work that takes more than a second or so (tqdm, which
huggingface_hub's download bars use too). Shown on a terminal only: logs stay clean."""

import sys


def progress_bar(total: int, what: str, unit: str = "it", stream=None):
    """A tqdm bar of `total` units; `.update(n)` advances it, `.close()` clears it."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    live = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, desc=what, unit=unit, unit_scale=unit == "B", file=stream,
                leave=False, disable=not live, dynamic_ncols=True)
