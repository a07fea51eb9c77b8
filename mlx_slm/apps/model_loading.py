"""Opening models for the apps: a name (directory or Hub id) -> a checked, loaded model.

Every app opens models here: resolve the name, read the config, refuse (before loading) what
will not fit in the memory the machine has free, load, and time the load.
"""

import gc
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlx_slm import memory
from mlx_slm.errors import SlmError
from mlx_slm.loader import LoadOptions
from mlx_slm.sizes import human_bytes, kv_cache_bytes, weight_bytes


@dataclass
class LoadedModel:
    """A loaded model with what was needed to find and load it."""

    name: str
    path: Path
    config: dict
    model: object
    tokenizer: object
    load_s: float

    @property
    def source_name(self) -> str:
        """The repo or directory name the model goes by (what an Instruct guess reads)."""
        from mlx_slm.convert.source import repo_name

        return repo_name(self.name, self.path)

    def dtype_note(self, asked: str | None) -> str | None:
        """A note when --dtype is not what the model computes in (a quantized model on a
        backend whose quantized layers compute in another dtype)."""
        from mlx_slm.loader import model_dtype

        got = model_dtype(self.model)
        if asked is None or asked == got:
            return None
        q = self.config.get("quantization")
        what = f"this {q['bits']}-bit model" if q else "this model"
        return f"[note: --dtype {asked} asked, but {what} computes in {got} on this backend]"


def resolve_model_dir(name: str) -> Path:
    """A model directory for `name`: the directory itself, or a Hub id's cached conversion."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise SlmError(f"{name} is a file; --model takes a model directory or a Hub repo id.")
    from mlx_slm.convert.hub import HubError, looks_like_repo_id, refuse_missing_path

    if looks_like_repo_id(name):
        from mlx_slm.convert.auto import converted_model_dir

        refuse_missing_path(name)
        try:
            return converted_model_dir(name)
        except HubError as err:
            if err.reason not in ("not found", "invalid repo id"):
                raise
            raise SlmError(f"No directory {name} exists, and as a Hub repo: {err}") from None
    raise SlmError(f"{name} is neither a model directory nor a Hub repo id (owner/name).")


def _checked(name: str, options: LoadOptions) -> tuple[Path, dict]:
    from mlx_slm.weights import read_config

    path = resolve_model_dir(name)
    config = read_config(path)
    check_fits(path, config, options.dtype, force=options.force)
    return path, config


def _load(name: str, path: Path, config: dict, options: LoadOptions) -> LoadedModel:
    from mlx_slm.loader import load

    start = time.perf_counter()
    model, tokenizer = load(path, options.dtype, options.adapter)
    return LoadedModel(name, path, config, model, tokenizer, time.perf_counter() - start)


def open_model(name: str, options: LoadOptions = LoadOptions()) -> LoadedModel:
    """Resolve, check that it fits, and load one model; `load_s` includes resolving."""
    start = time.perf_counter()
    loaded = _load(name, *_checked(name, options), options)
    loaded.load_s = time.perf_counter() - start
    return loaded


def load_each(names: list[str], options: LoadOptions = LoadOptions()) -> Iterator[LoadedModel]:
    """Load each model in turn, yield it, and free it before the next one loads.

    Every name is resolved and checked first, so a typo in the last one fails at once.
    A --dtype that a model does not compute in gets a note on stderr.
    MLX's peak-memory counter is reset before each load, so each peak is that model's own.
    """
    import mlx.core as mx

    from mlx_slm.memory import reset_mlx_peak

    resolved = [(name, *_checked(name, options)) for name in names]
    for name, path, config in resolved:
        gc.collect()
        mx.clear_cache()
        reset_mlx_peak()
        loaded = _load(name, path, config, options)
        note = loaded.dtype_note(options.dtype)
        if note:  # compare and quiz: said once per model, on stderr
            print(note, file=sys.stderr)
        yield loaded
        loaded.model = None
    gc.collect()
    mx.clear_cache()


OVERHEAD = 1.10  # activations, allocator slack and the runtime itself


def estimate_bytes(model_dir: Path, config: dict, dtype: str | None = None,
                   tokens: int | None = None) -> int:
    """Weights + a float32 KV cache for `tokens` positions (default: the whole context)."""
    tokens = tokens or config.get("max_context_length", 2048)
    return int((weight_bytes(model_dir, dtype) + kv_cache_bytes(config, tokens, 4)) * OVERHEAD)


def check_fits(model_dir: Path, config: dict, dtype: str | None = None, force: bool = False,
               tokens: int | None = None, available: int | None = None) -> None:
    """Raise with the figures if the model needs more than is available (unless `force`)."""
    if force:
        return
    available = memory.available_bytes() if available is None else available
    if available is None:
        return
    needed = estimate_bytes(model_dir, config, dtype, tokens)
    if needed > available:
        raise SlmError(
            f"This model needs about {human_bytes(needed)} (weights + KV cache) but only "
            f"{human_bytes(available)} is available; use a smaller size or a quantized model "
            "(mlx-slm quantize), or pass --force to try anyway."
        )

