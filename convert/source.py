"""Where a conversion reads from: a local directory in the Hub layout, or a Hub repo.

A Hub repo is fetched in two steps: config.json (and a tokenizer.model if the repo ships
one) first, so a wrong model type or a missing tokenizer stops us before the weights are
downloaded; then the weights.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from mlx_slm.chat_format import METADATA_KEY
from mlx_slm.errors import SlmError
from mlx_slm.model import ModelArgs
from mlx_slm.tokenizer import TOKENIZER_FILE
from mlx_slm.weights import read_config

from .hub import LIGHT_FILES, MODEL_FILES, fetch_snapshot, looks_like_repo_id
from .llama_tokenizer import LLAMA2_PIECES, TokenizerFile, resolve_tokenizer

# huggingface_hub's cache folder for a model repo: models--{owner}--{name}
HF_CACHE_FOLDER = re.compile(r"models--([^/]+?)--([^/]+)")


@dataclass
class Source:
    path: Path  # a local directory holding config.json and the weights
    name: str  # the repo id, or the directory's absolute path
    revision: str | None  # the commit of a Hub snapshot
    config: dict
    tokenizer: TokenizerFile

    @property
    def instruct(self) -> bool:
        """Whether this is an Instruct model: from our own metadata, else from its name."""
        meta = self.config.get(METADATA_KEY) or {}
        if "instruct" in meta:
            return bool(meta["instruct"])
        # apple/OpenELM-270M-Instruct, mlx-community/OpenELM-3B-Instruct-4bit, ...
        return "instruct" in repo_name(self.name, self.path).split("/")[-1].lower().split("-")


def repo_name(name: str, path: Path) -> str:
    """The repo name behind a source: the id itself, a Hub cache folder's, or the directory's."""
    if looks_like_repo_id(name) and not Path(name).expanduser().exists():
        return name
    for part in reversed(Path(path).resolve().parts):
        match = HF_CACHE_FOLDER.fullmatch(part)
        if match:
            return f"{match[1]}/{match[2]}"
    return Path(path).resolve().name


def checked_config(model_dir: Path) -> dict:
    """config.json of `model_dir`, validated as an OpenELM config over the Llama-2 vocabulary."""
    config = read_config(model_dir)
    ModelArgs.from_config(config)
    if config.get("vocab_size", LLAMA2_PIECES) != LLAMA2_PIECES:
        raise SlmError(
            f"{model_dir / 'config.json'}: vocab_size is {config['vocab_size']}, but OpenELM's "
            f"Llama-2 tokenizer has {LLAMA2_PIECES} pieces; this is not an OpenELM checkpoint."
        )
    return config


def open_source(source: str, revision: str | None, tokenizer: str | None, log) -> Source:
    """Resolve SOURCE (a directory or a Hub repo id) and its tokenizer; download if needed."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision:
            raise SlmError("--revision applies to Hub repos only; SOURCE is a local directory.")
        config = checked_config(path)
        tok = resolve_tokenizer(tokenizer, path / TOKENIZER_FILE)
        return Source(path, str(path.absolute()), None, config, tok)
    if path.exists():
        raise SlmError(f"{source} is a file; SOURCE must be a model directory or a Hub repo id.")
    if not looks_like_repo_id(source):
        raise SlmError(f"{source} is neither a directory nor a Hub repo id (owner/name).")
    log(f"Fetching {source} config from the Hub (or its cache)...")
    light = fetch_snapshot(source, revision, LIGHT_FILES)
    config = checked_config(light)
    tok = resolve_tokenizer(tokenizer, light / TOKENIZER_FILE)
    log(f"Fetching {source} weights...")
    snapshot = fetch_snapshot(source, revision, MODEL_FILES)
    commit = snapshot.name if snapshot.parent.name == "snapshots" else revision
    return Source(snapshot, source, commit, checked_config(snapshot), tok)
