"""The converted-model cache ($MLX_SLM_HOME/models): list, remove and pull entries.

An entry is the directory `generate --model REPO` converts once and reuses (see
convert/auto.py). Listing reads each entry's config and file sizes, never its weights.
Removing takes the entry's write lock, so an entry that a running process is converting is
refused rather than deleted under it.
"""

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

from mlx_slm.errors import SlmError


@dataclass
class CachedModel:
    """One cache entry, as `mlx-slm models` lists it."""

    name: str  # the entry's directory name, e.g. apple--OpenELM-270M-Instruct
    path: Path
    repo_id: str
    revision: str | None
    precision: str
    size_bytes: int  # every file of the entry, as du counts
    created: float | None  # seconds since the epoch: when its conversion completed
    last_used: float | None
    instruct: bool
    problem: str | None = None  # why it would be converted again, if it would

    def as_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "repo_id": self.repo_id,
                "revision": self.revision, "precision": self.precision,
                "size_bytes": self.size_bytes, "created": self.created,
                "last_used": self.last_used, "instruct": self.instruct,
                "problem": self.problem}


def list_models() -> list[CachedModel]:
    """Every entry of the cache, by repo id; hidden work files are not entries."""
    from mlx_slm.convert.auto import cache_root

    root = cache_root()
    if not root.is_dir():
        return []
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted((describe_entry(p) for p in entries), key=lambda m: (m.repo_id, m.name))


def describe_entry(path: Path) -> CachedModel:
    """What the listing shows of one entry (a damaged one is listed with its problem)."""
    from mlx_slm.chat_format import METADATA_KEY, is_instruct
    from mlx_slm.convert.auto import LAST_USED_FILE
    from mlx_slm.store.manifest import MANIFEST_FILE, manifest_problem
    from mlx_slm.weights import read_config

    repo_id = path.name.split("@")[0].replace("--", "/", 1)
    revision = path.name.split("@")[1] if "@" in path.name else None
    precision, instruct = "?", False
    problem = manifest_problem(path)
    try:
        config = read_config(path)
        meta = config.get(METADATA_KEY) or {}
        repo_id = meta.get("source") or repo_id
        revision = meta.get("revision") or revision
        precision = _precision(config)
        instruct = is_instruct(config, repo_id)
    except SlmError as err:
        problem = problem or str(err)
    return CachedModel(
        name=path.name, path=path, repo_id=repo_id, revision=revision, precision=precision,
        size_bytes=sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
        created=_mtime(path / MANIFEST_FILE), last_used=_mtime(path / LAST_USED_FILE),
        instruct=instruct, problem=problem,
    )


def _precision(config: dict) -> str:
    from mlx_slm.apps.model_info import quantization_summary
    from mlx_slm.chat_format import METADATA_KEY

    q = config.get("quantization")
    if q:
        return quantization_summary(q).split(";")[0].replace(", group size ", " g")
    meta = config.get(METADATA_KEY) or {}
    return str(meta.get("dtype") or config.get("torch_dtype") or "?")


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def find_models(names: list[str]) -> list[CachedModel]:
    """The entries that `names` (repo ids or entry names) pick, each once; an unknown name
    is an error naming the closest entry."""
    models = list_models()
    picked = []
    for name in names:
        found = [m for m in models if name in (m.name, m.repo_id, str(m.path))]
        if not found:
            known = sorted({m.repo_id for m in models} | {m.name for m in models})
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else (
                "" if known else "; the cache is empty")
            raise SlmError(f"No cached model {name}{hint}; `mlx-slm models` lists them.")
        picked += [m for m in found if m not in picked]
    return picked


def remove_model(model: CachedModel) -> None:
    """Delete an entry, holding its write lock: one that a process is writing is refused."""
    from mlx_slm.store.staging import DestinationBusy, destination_lock, remove_leftovers

    try:
        with destination_lock(model.path):
            remove_leftovers(model.path)
            shutil.rmtree(model.path)
    except DestinationBusy:
        raise SlmError(f"{model.repo_id} ({model.path}) is being written by another process; "
                       "wait for it to finish, then remove it.") from None
    except OSError as err:
        raise SlmError(f"Cannot remove {model.path}: {err.strerror or err}.") from None


def pull(repo_id: str, revision: str | None = None, log=None) -> tuple[Path, bool]:
    """Convert a Hub repo into the cache (as `generate --model REPO` would on first use);
    returns its entry and whether it was converted now (False: it was already there)."""
    from mlx_slm.convert.auto import cache_root, converted_model_dir, entry_name
    from mlx_slm.convert.hub import looks_like_repo_id, refuse_missing_path
    from mlx_slm.store.manifest import manifest_problem

    if not looks_like_repo_id(repo_id) or Path(repo_id).expanduser().is_dir():
        raise SlmError(f"{repo_id} is not a Hub repo id (owner/name); pull takes one, e.g. "
                       "apple/OpenELM-270M-Instruct (convert a local directory with "
                       "mlx-slm convert).")
    refuse_missing_path(repo_id)
    entry = cache_root() / entry_name(repo_id, revision)
    fresh = not (entry.is_dir() and manifest_problem(entry) is None)
    kwargs = {} if log is None else {"log": log}
    return converted_model_dir(repo_id, revision, **kwargs), fresh


def format_models(models: list[CachedModel], now: float) -> str:
    """The table `mlx-slm models` prints, then a line per entry that needs attention."""
    from mlx_slm.apps.table import render_table
    from mlx_slm.sizes import human_bytes

    if not models:
        return "No models in the cache yet: mlx-slm models pull REPO, or generate -m REPO."
    rows = [[m.repo_id + (f"@{m.revision[:12]}" if _pinned(m) else ""), m.precision,
             human_bytes(m.size_bytes), ago(m.created, now), ago(m.last_used, now),
             "yes" if m.instruct else "no"] for m in models]
    table = render_table(["model", "precision", "size", "created", "last used", "instruct"],
                         rows, right=frozenset({2}))
    notes = [f"- {m.name}: {m.problem}; it will be converted again on its next use"
             for m in models if m.problem]
    return "\n".join([table, *notes])


def _pinned(model: CachedModel) -> bool:
    """Whether the entry is for a revision asked for by name (not the default branch)."""
    return "@" in model.name and model.revision is not None


def ago(when: float | None, now: float) -> str:
    """'just now', '5 minutes ago', '3 days ago'; '-' when unknown."""
    if when is None:
        return "-"
    seconds = max(0.0, now - when)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "just now"
