"""Test-side launcher: run a conversion that stops at chosen points, for kill and race tests.

It wraps library functions in its own process only, so the product carries no test hooks.
At every point it passes it writes the point's name as a line to the REPORT file descriptor;
at the first passage of a point named by --pause it then blocks until the parent writes a
byte to the GO file descriptor, or kills it. The points, in the order a conversion meets them:

  start        convert() is about to take the destination's lock
  staged       the lock is held and the temporary directory made
  tokenizer    the tokenizer is resolved
  shard:N      the Nth safetensors file is written
  manifest     every other file is written; the manifest is next
  rename       the complete directory is about to move into place
  swapped      an existing destination was exchanged with the new one, not yet deleted
  moved-aside  (--no-exchange) the old destination was moved aside, the new one not yet in
  waiting      converted_model_dir is about to wait for another process converting its repo

usage: fault_launcher.py --report FD --go FD [--pause POINT]... [--no-exchange]
                         [--max-file-size BYTES] -- COMMAND...
COMMAND is `mlx-slm` arguments, or `auto REPO` to print converted_model_dir(REPO).
--max-file-size sets RLIMIT_FSIZE with SIGXFSZ ignored: a write past it fails with EFBIG,
as writes on a full disk fail with ENOSPC.
"""

import argparse
import itertools
import os
import resource
import signal
import sys
from contextlib import contextmanager

import mlx_slm  # noqa: F401  (first, as the CLI does: it puts the BLAS under mlx)


class Points:
    """Reports each point to the parent, and waits for it at the ones to pause at."""

    def __init__(self, report_fd: int, go_fd: int, pauses: list[str]):
        self.report_fd, self.go_fd, self.pending = report_fd, go_fd, set(pauses)

    def __call__(self, name: str) -> None:
        os.write(self.report_fd, f"{name}\n".encode())
        if name in self.pending:
            self.pending.discard(name)
            if not os.read(self.go_fd, 1):
                sys.exit("fault_launcher: the test closed its end of the GO pipe")


def wrap(owner, name: str, before=None, after=None) -> None:
    """Replace owner.name by a wrapper calling before(*args) first and after(result) last."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before:
            before(*args)
        result = real(*args, **kwargs)
        if after:
            after(result)
        return result

    setattr(owner, name, wrapper)


def install(point: Points, no_exchange: bool) -> None:
    """Wrap the functions that mark each point (see the module docstring)."""
    import mlx.core as mx

    import mlx_slm.store.staging as staging
    from mlx_slm.convert import auto, pipeline, source

    real_staged_directory = pipeline.staged_directory

    @contextmanager
    def staged_directory(dest, force=False):
        point("start")
        with real_staged_directory(dest, force) as tmp:
            point("staged")
            yield tmp

    pipeline.staged_directory = staged_directory
    shards = itertools.count(1)
    wrap(source, "resolve_tokenizer", after=lambda _: point("tokenizer"))
    wrap(mx, "save_safetensors", after=lambda _: point(f"shard:{next(shards)}"))
    wrap(pipeline, "write_manifest", before=lambda *_: point("manifest"))
    wrap(staging, "_move_into_place", before=lambda *_: point("rename"))
    wrap(auto, "wait_for_writer", before=lambda *_: point("waiting"))
    if no_exchange:
        staging._exchange = lambda a, b: False
    else:
        wrap(staging, "_exchange", after=lambda swapped: swapped and point("swapped"))
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        if staging.OLD_MARK in str(dst):
            point("moved-aside")

    os.replace = replace


def run(command: list[str]) -> None:
    if command[0] == "auto":
        from mlx_slm.convert.auto import converted_model_dir
        from mlx_slm.errors import SlmError

        try:
            print(converted_model_dir(command[1]))
        except SlmError as err:
            sys.exit(f"Error: {err}")
        except KeyboardInterrupt:
            sys.exit(130)
        return
    from mlx_slm.commands.cli import main

    main(command, prog_name="mlx-slm")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", type=int, required=True)
    parser.add_argument("--go", type=int, required=True)
    parser.add_argument("--pause", action="append", default=[])
    parser.add_argument("--no-exchange", action="store_true")
    parser.add_argument("--max-file-size", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    install(Points(args.report, args.go, args.pause), args.no_exchange)
    if args.max_file_size:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.max_file_size, args.max_file_size))
    run(command)
