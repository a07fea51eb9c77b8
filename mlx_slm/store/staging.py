"""Write a directory atomically: build it under a hidden name beside the destination, then
rename it into place once complete.

One writer at a time: a writer holds an exclusive lock (flock) on `.NAME.lock` beside the
destination, which the kernel releases if the process dies, so a killed writer never blocks
the next one. An interrupted (Ctrl-C, SIGTERM) or failed write leaves nothing behind; a
process killed outright leaves a `.NAME.tmp-PID-*` directory that the next write to NAME
removes once PID is gone. An existing destination is replaced only when asked, only after
the new directory is complete, and by one atomic exchange where the system offers it (Linux
renameat2, macOS renamex_np). Elsewhere it takes two renames, and a kill between them leaves
the old directory aside as `.NAME.old-PID-*/NAME`, which the next write to NAME puts back.
"""

import ctypes
import errno
import fcntl
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
LOCK_MARK = ".lock"
# renameat2's RENAME_EXCHANGE (Linux) and renamex_np's RENAME_SWAP (macOS) are both 2.
SWAP_FLAG = 2
AT_FDCWD = -100  # Linux
NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


class DestinationBusy(SlmError):
    """Another process is writing the same destination."""


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


def check_apart(source: Path, dest: Path) -> None:
    """Refuse a destination equal to, inside or containing the source: replacing it
    (`--force`) or writing into it would delete or change the source."""
    src, out = Path(source).expanduser().resolve(), Path(dest).expanduser().resolve()
    if out == src:
        raise SlmError(f"{dest} is the source directory; choose another output directory.")
    if out.is_relative_to(src):
        raise SlmError(f"{dest} is inside the source directory {source}; choose an output "
                       "directory outside it.")
    if src.is_relative_to(out):
        raise SlmError(f"{dest} contains the source directory {source}, which replacing it "
                       "would delete; choose another output directory.")


@contextmanager
def staged_directory(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty directory that becomes `dest` when the block completes without error.

    The block runs holding `dest`'s lock: another writer gets DestinationBusy at once.
    """
    dest = Path(dest).absolute()
    check_destination(dest, force)
    created = _make_parents(dest.parent)
    try:
        with destination_lock(dest):
            remove_leftovers(dest)
            check_destination(dest, force)  # a writer that held the lock may have made it
            tmp = _fresh_sibling(dest, TEMP_MARK)
            try:
                with _sigterm_as_exit():
                    yield tmp
                _move_into_place(tmp, dest, force)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        for parent in reversed(created):
            _remove_if_empty(parent)
        raise


@contextmanager
def destination_lock(dest: Path, wait: bool = False) -> Iterator[None]:
    """Hold `dest`'s lock (its parent must exist); DestinationBusy if taken, unless `wait`."""
    path = dest.parent / f".{dest.name}{LOCK_MARK}"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise SlmError(f"Cannot create {path}: {err.strerror}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            # The holder before us removes the file as it lets go: then lock the new one.
            held = _is_file_at(fd, path)
        except BaseException as err:
            os.close(fd)
            if isinstance(err, BlockingIOError):
                raise DestinationBusy(
                    f"Another conversion is writing {dest}; wait for it to finish, or choose "
                    "another output directory."
                ) from None
            raise
        if held:
            break
        os.close(fd)
    try:
        yield
    finally:
        with suppress(OSError):
            path.unlink()
        os.close(fd)


def wait_for_writer(dest: Path) -> None:
    """Block until no process is writing `dest`."""
    dest = Path(dest).absolute()
    if dest.parent.is_dir():  # else the writer failed and removed the parents it made
        with destination_lock(dest, wait=True):
            pass


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


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
        try:
            swapped = _exchange(tmp, dest)
        except OSError as err:
            raise SlmError(f"Cannot replace {dest}: {err.strerror}.") from None
        if swapped:
            shutil.rmtree(tmp, ignore_errors=True)  # now the old directory
        else:
            _replace_in_two_renames(tmp, dest)
        return
    try:
        os.rename(tmp, dest)
    except OSError as err:
        raise SlmError(f"Cannot move the new directory to {dest}: {err.strerror}.") from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where the system or file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renamex_np"):  # macOS
        result = libc.renamex_np(os.fsencode(a), os.fsencode(b), SWAP_FLAG)
    elif hasattr(libc, "renameat2"):  # Linux, glibc 2.28+
        result = libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), SWAP_FLAG)
    else:
        return False
    code = ctypes.get_errno() if result else 0
    if code in NO_EXCHANGE:
        return False
    if code:
        raise OSError(code, os.strerror(code), str(b))
    return True


def _replace_in_two_renames(tmp: Path, dest: Path) -> None:
    """Move `dest` aside, then `tmp` in; on an error in between, the old one goes back."""
    aside = _fresh_sibling(dest, OLD_MARK) / dest.name
    try:
        os.replace(dest, aside)
        os.replace(tmp, dest)
    except BaseException as err:
        if aside.exists() and not dest.exists():
            os.replace(aside, dest)
        _remove_if_empty(aside.parent)
        if isinstance(err, OSError):
            raise SlmError(f"Cannot replace {dest}: {err.strerror}.") from None
        raise
    shutil.rmtree(aside.parent, ignore_errors=True)


def remove_leftovers(dest: Path) -> None:
    """Delete temporary and replaced siblings of `dest` whose writing process is gone, first
    putting back a `dest` that such a process had moved aside."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return
    for path in dest.parent.iterdir():
        for mark in (TEMP_MARK, OLD_MARK):
            prefix = f".{dest.name}{mark}"
            if path.name.startswith(prefix):
                pid = path.name[len(prefix):].split("-")[0]
                if pid.isdigit() and not _alive(int(pid)):
                    if mark == OLD_MARK and (path / dest.name).is_dir() and not dest.exists():
                        try:
                            os.replace(path / dest.name, dest)
                        except OSError:
                            continue  # never delete the only copy
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


def check_disk_space(out_dir: Path, model) -> None:
    """Refuse to start writing what the destination's file system cannot hold."""
    from mlx.utils import tree_flatten

    needed = sum(a.nbytes for _, a in tree_flatten(model.parameters()))
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise SlmError(
            f"{out_dir} needs about {needed / 1e9:.2f} GB but its file system has "
            f"{free / 1e9:.2f} GB free; free some space or choose another directory."
        )
