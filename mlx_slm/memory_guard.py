"""Refuse, before loading, a model that will not fit in the memory the machine has free."""

import os
import sys
from pathlib import Path

from mlx_slm.errors import SlmError

GB = 1e9
OVERHEAD = 1.10  # activations, allocator slack and the runtime itself
DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2}


def available_bytes() -> int | None:
    """Memory available to a new allocation: MemAvailable on Linux, physical RAM on macOS."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def weight_bytes(model_dir: Path, dtype: str | None = None) -> int:
    """Bytes of the weights once loaded (floating tensors recast to `dtype` if given)."""
    from mlx_slm.weights import DTYPE_BYTES, read_headers

    total = 0
    for entry in read_headers(model_dir).values():
        count = 1
        for d in entry["shape"]:
            count *= d
        size = DTYPE_BYTES[entry["dtype"]]
        if dtype and entry["dtype"] in ("F32", "F16", "BF16"):
            size = DTYPE_SIZES[dtype]
        total += count * size
    return total


def kv_cache_bytes(config: dict, tokens: int, dtype_size: int = 2) -> int:
    """Keys and values of every layer for `tokens` positions, batch 1."""
    heads = config.get("num_kv_heads") or []
    return 2 * sum(heads) * config.get("head_dim", 0) * tokens * dtype_size


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
    available = available_bytes() if available is None else available
    if available is None:
        return
    needed = estimate_bytes(model_dir, config, dtype, tokens)
    if needed > available:
        raise SlmError(
            f"This model needs about {human_bytes(needed)} (weights + KV cache) but only "
            f"{human_bytes(available)} is available; use a smaller size or a quantized model "
            "(mlx-slm quantize), or pass --force to try anyway."
        )


def human_bytes(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"
