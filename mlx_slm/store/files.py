"""Single files written whole or not at all: a hidden temporary beside the target, renamed
into place (a rename within one folder is atomic)."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path to write; it replaces `target` if the block ends without error."""
    target = Path(target)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(target: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `target`, whole or not at all."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
