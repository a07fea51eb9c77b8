"""A model directory's manifest: every file's size and sha256, written last.

A directory whose manifest is missing, unreadable or disagrees with the files was
interrupted or damaged after the fact; the auto-convert cache rebuilds it instead of
loading it. Hashing gigabytes on every start would cost seconds, so a file is re-hashed
only when its size or modification time (nanoseconds) differs from the record: any write
to it changes those.
"""

import hashlib
import json
from pathlib import Path

from mlx_slm.store.files import write_json

MANIFEST_FILE = "manifest.json"
CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(model_dir: Path) -> None:
    """Record the size and sha256 of every file in `model_dir` (call it after the last write)."""
    model_dir = Path(model_dir)
    files = {
        p.name: {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                 "sha256": file_sha256(p)}
        for p in sorted(model_dir.iterdir())
        if p.is_file() and p.name != MANIFEST_FILE
    }
    write_json(model_dir / MANIFEST_FILE, {"files": files})


def manifest_problem(model_dir: Path, deep: bool = False) -> str | None:
    """Why `model_dir` does not match its manifest, or None when every file does.

    `deep` re-hashes every file even when its size and modification time are unchanged.
    """
    model_dir = Path(model_dir)
    try:
        with open(model_dir / MANIFEST_FILE, encoding="utf-8") as f:
            files = json.load(f)["files"]
        expected = {str(name): (int(e["size"]), e.get("mtime_ns"), str(e["sha256"]))
                    for name, e in files.items()}
    except FileNotFoundError:
        return "no manifest (an interrupted conversion)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unreadable manifest"
    if not expected:
        return "empty manifest"
    for name, (size, mtime_ns, sha256) in sorted(expected.items()):
        path = model_dir / name
        if Path(name).name != name or not path.is_file():
            return f"{name} is missing"
        stat = path.stat()
        if stat.st_size != size:
            return f"{name} has {stat.st_size} bytes, not {size}"
        unchanged = stat.st_mtime_ns == mtime_ns
        if (deep or not unchanged) and file_sha256(path) != sha256:
            return f"{name} is corrupt (sha256 mismatch)"
    # A stray weight file or index would change what the loader reads.
    strays = sorted(
        p.name for pattern in ("*.safetensors", "*.json") for p in model_dir.glob(pattern)
        if p.name not in expected and p.name != MANIFEST_FILE
    )
    if strays:
        return f"unexpected file {strays[0]}"
    return None
