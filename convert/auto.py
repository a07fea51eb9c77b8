"""`generate --model REPO`: convert a Hub repo once into a cache directory, then reuse it.

Entries live in $MLX_SLM_HOME/models (default ~/.cache/mlx-slm/models), one per repo and
revision, named <owner>--<name>. An entry's manifest is written last and checked on every
use, so a half-written or damaged entry is converted again, never loaded. A process that
finds another converting the same entry waits for it and reuses its result. Reuse never
asks the Hub whether the repo changed: delete the entry to refresh it.
"""

import re
from contextlib import suppress
from pathlib import Path

from mlx_slm.store.home import HOME_ENV, home  # noqa: F401  (HOME_ENV: re-exported)
from mlx_slm.store.manifest import manifest_problem
from mlx_slm.store.staging import DestinationBusy, remove_leftovers, wait_for_writer

from .pipeline import convert, log_to_stderr

LAST_USED_FILE = ".last-used"  # touched at each use; its mtime is what `models` lists


def cache_root() -> Path:
    """Where converted models are kept: $MLX_SLM_HOME/models or ~/.cache/mlx-slm/models."""
    return home() / "models"


def entry_name(repo_id: str, revision: str | None = None) -> str:
    name = repo_id.replace("/", "--")
    if revision:
        name += "@" + re.sub(r"[^A-Za-z0-9._-]", "_", revision)
    return name


def converted_model_dir(repo_id: str, revision: str | None = None, log=log_to_stderr) -> Path:
    """The MLX model directory for a Hub repo id, converted on first use and reused after."""
    entry = cache_root() / entry_name(repo_id, revision)
    while True:
        if entry.is_dir():
            problem = manifest_problem(entry)
            if problem is None:
                remove_leftovers(entry)  # e.g. the old copy of one killed after its swap
                mark_used(entry)
                return entry
            log(f"[cached conversion {entry} is damaged ({problem}); converting again]")
        else:
            log(f"[converting {repo_id} once into {entry}]")
        try:
            convert(repo_id, entry, revision=revision, force=True, log=log)
            mark_used(entry)
            return entry
        except DestinationBusy:
            # Another process is converting it: use its result rather than convert twice.
            log(f"[another process is converting {repo_id} into {entry}; waiting for it]")
            wait_for_writer(entry)


def mark_used(entry: Path) -> None:
    """Record that `entry` was used now (a read-only cache simply keeps no record)."""
    with suppress(OSError):
        (entry / LAST_USED_FILE).touch()
