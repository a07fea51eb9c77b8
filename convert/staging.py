"""Write a directory atomically: build it under a hidden name beside the destination, then
rename it into place once complete.

An interrupted (Ctrl-C, SIGTERM) or failed write leaves nothing behind; a process killed
outright leaves a `.NAME.tmp-PID-*` directory that the next write to NAME removes once PID
is gone. An existing destination is replaced only when asked, and only after the new
directory is complete.
"""

import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from mlx_slm.errors import SlmError

TEMP_MARK = ".tmp-"
OLD_MARK = ".old-"


def check_destination(dest: Path, force: bool) -> None:
    """Refuse a destination that is a file, or an existing directory without `force`."""
    if dest.is_symlink():
        raise SlmError(f"{dest} is a symbolic link; give the directory it points to instead.")
    if dest.exists():
        if not dest.is_dir():
            raise SlmError(f"{dest} exists and is not a directory; choose another output path.")
        if not force:
            raise SlmError(
                f"{dest} already exists; pass --force to replace it, or choose another output "
                "directory."
            )


@contextmanager
def staged_directory(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty directory that becomes `dest` when the block completes without error."""
    dest = Path(dest).absolute()
    check_destination(dest, force)
    created = _make_parents(dest.parent)
    tmp, done = None, False
    try:
        remove_leftovers(dest)
        tmp = _fresh_sibling(dest, TEMP_MARK)
        with _sigterm_as_exit():
            yield tmp
        _move_into_place(tmp, dest, force)
        done = True
    finally:
        if not done:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for parent in reversed(created):
                _remove_if_empty(parent)


def _fresh_sibling(dest: Path, mark: str) -> Path:
    """A new directory beside `dest`, named for it and for this process (umask applies)."""
    while True:
        path = dest.parent / f".{dest.name}{mark}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise SlmError(f"Cannot create a directory in {dest.parent}: {err.strerror}.") from None


def _move_into_place(tmp: Path, dest: Path, force: bool) -> None:
    if dest.exists() or dest.is_symlink():
        check_destination(dest, force)  # it may have appeared while we worked
        old = _fresh_sibling(dest, OLD_MARK)
        os.replace(dest, old / dest.name)
        try:
            os.replace(tmp, dest)
        except OSError as err:
            os.replace(old / dest.name, dest)
            old.rmdir()
            raise SlmError(f"Cannot replace {dest}: {err.strerror}.") from None
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, dest)
    except OSError as err:
        raise SlmError(f"Cannot move the new directory to {dest}: {err.strerror}.") from None


def remove_leftovers(dest: Path) -> None:
    """Delete temporary and replaced siblings of `dest` whose writing process is gone."""
    parent = Path(dest).parent
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        for mark in (TEMP_MARK, OLD_MARK):
            prefix = f".{dest.name}{mark}"
            if path.name.startswith(prefix):
                pid = path.name[len(prefix):].split("-")[0]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (outermost first)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            pass
        except OSError as err:
            raise SlmError(f"Cannot create {p}: {err.strerror}.") from None
    return list(reversed(missing))


def _remove_if_empty(path: Path) -> None:
    with suppress(OSError):
        path.rmdir()


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit while writing, so the cleanup above runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
