"""Single files written whole or not at all: a hidden temporary beside the target, renamed
into place (a rename within one folder is atomic)."""

import json
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


def read_utf8(path: str | Path, what: str) -> str:
    """A user's text file, or an SlmError that says what is wrong with it (`what` names the
    file's role, e.g. "--questions takes a UTF-8 JSONL file")."""
    from mlx_slm.errors import SlmError

    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SlmError(f"{path} does not exist; {what}.") from None
    except UnicodeDecodeError:
        raise SlmError(f"{path} is not UTF-8 text; {what}.") from None
    except OSError as err:
        raise SlmError(f"Cannot read {path}: {err.strerror or err}.") from None


def write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
