"""Find the Llama-2 tokenizer.model that OpenELM uses (its Hub repos ship none) and verify it.

A file is accepted only if its sha256 is the Llama-2 tokenizer's: OpenELM was trained on
exactly that vocabulary, and any other file turns its output into garbage without an error.
"""

from dataclasses import dataclass
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.store.manifest import file_sha256
from mlx_slm.tokenizer import TOKENIZER_FILE

from .hub import HubError, fetch_file, looks_like_repo_id

LLAMA2_SHA256 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
LLAMA2_PIECES = 32000
# The official (gated) copy first, then a byte-identical public one.
DEFAULT_REPOS = ("meta-llama/Llama-2-7b-hf", "NousResearch/Llama-2-7b-hf")
HOW_TO_SUPPLY = (
    f"pass --tokenizer PATH (the Llama-2 tokenizer.model, sha256 {LLAMA2_SHA256[:8]}...) or "
    f"--tokenizer REPO (a Hub repo holding it, e.g. {DEFAULT_REPOS[1]}), or request access to "
    f"{DEFAULT_REPOS[0]} at https://huggingface.co/{DEFAULT_REPOS[0]} and set HF_TOKEN"
)


@dataclass(frozen=True)
class TokenizerFile:
    path: Path
    sha256: str
    origin: str  # where it came from: a path or a repo id


def verified(path: Path, origin: str) -> TokenizerFile:
    """`path` as a TokenizerFile if it is the Llama-2 tokenizer; an error naming both hashes."""
    try:
        sha256 = file_sha256(path)
    except OSError as err:
        raise SlmError(f"Cannot read the tokenizer {path}: {err.strerror}.") from None
    if sha256 != LLAMA2_SHA256:
        raise SlmError(
            f"The tokenizer from {origin} has sha256 {sha256}, not the Llama-2 tokenizer's "
            f"{LLAMA2_SHA256}; OpenELM needs that exact file: {HOW_TO_SUPPLY}."
        )
    return TokenizerFile(Path(path), sha256, origin)


def from_spec(spec: str) -> TokenizerFile:
    """--tokenizer: a tokenizer.model file, a directory holding one, or a Hub repo id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise SlmError(f"--tokenizer {spec}: the directory has no {TOKENIZER_FILE}.")
    if path.is_file():
        return verified(path, str(path))
    if looks_like_repo_id(spec):
        return verified(fetch_file(spec, TOKENIZER_FILE), spec)
    raise SlmError(f"--tokenizer {spec}: no such file, and not a Hub repo id (owner/name).")


def resolve_tokenizer(spec: str | None = None, bundled: Path | None = None) -> TokenizerFile:
    """--tokenizer if given; else the source's own tokenizer.model; else the Llama-2 repos."""
    if spec:
        return from_spec(spec)
    failures = []
    if bundled is not None and bundled.is_file():
        try:
            return verified(bundled, str(bundled))
        except SlmError:
            failures.append(f"{bundled}: a different tokenizer")
    for repo in DEFAULT_REPOS:
        try:
            return verified(fetch_file(repo, TOKENIZER_FILE), repo)
        except HubError as err:
            failures.append(f"{repo}: {err.reason}")
        except SlmError:
            failures.append(f"{repo}: a different tokenizer")
    raise SlmError(
        f"No Llama-2 tokenizer could be had ({'; '.join(failures)}), and OpenELM checkpoints "
        f"ship none: {HOW_TO_SUPPLY}."
    )
