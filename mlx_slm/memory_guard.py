"""Refuse, before loading, a model that will not fit in the memory the machine has free."""

import os
import sys
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.memory import proc_kib
from mlx_slm.sizes import human_bytes, kv_cache_bytes, weight_bytes

OVERHEAD = 1.10  # activations, allocator slack and the runtime itself


def available_bytes() -> int | None:
    """Memory available to a new allocation: MemAvailable on Linux, physical RAM on macOS."""
    if sys.platform.startswith("linux"):
        return proc_kib("/proc/meminfo", "MemAvailable")
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


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

