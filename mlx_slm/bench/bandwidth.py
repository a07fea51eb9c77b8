"""The memory-bandwidth ceiling of batch-1 decoding, and the bytes a token reads.

Each decoded token reads every weight once plus the KV cache, so bandwidth / bytes per
token bounds generation tok/s; the roofline fraction says how close a run came.
"""

import json
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from mlx_slm.bench.machine import cpu_brand, machine_fingerprint
from mlx_slm.memory import GB
from mlx_slm.store.files import write_atomically
from mlx_slm.store.home import home

CACHE_FILE = "bandwidth.json"
MEASURE_METHOD = "numpy float32 matrix-vector product over 512 MiB, best of 5"
# Unified-memory bandwidth in GB/s as Apple publishes it; binned Max chips by CPU cores.
APPLE_BANDWIDTH_GBS = {
    "M1": 68.25, "M1 Pro": 200, "M1 Max": 400, "M1 Ultra": 800,
    "M2": 100, "M2 Pro": 200, "M2 Max": 400, "M2 Ultra": 800,
    "M3": 100, "M3 Pro": 150, "M3 Max": {14: 300, 16: 400}, "M3 Ultra": 819,
    "M4": 120, "M4 Pro": 273, "M4 Max": {14: 410, 16: 546},
    "M5": 153,
}


def apple_chip_bandwidth(brand: str, cores: int | None = None) -> tuple[str, float] | None:
    """(chip, GB/s) for an Apple brand string such as 'Apple M2 Pro', else None."""
    match = re.fullmatch(r"Apple (M\d+)(?: (Pro|Max|Ultra))?", brand.strip())
    if not match:
        return None
    chip = " ".join(part for part in match.groups() if part)
    value = APPLE_BANDWIDTH_GBS.get(chip)
    if isinstance(value, dict):
        # An unknown bin gets the higher figure, so the roofline fraction is not overstated.
        value = value.get(cores, max(value.values()))
    return (chip, float(value)) if value is not None else None


def measure_bandwidth(buffer_bytes: int = 512 * 2**20, repeats: int = 5,
                      clock: Callable[[], float] = time.perf_counter) -> float:
    """Read bandwidth in GB/s: a float32 matrix-vector product (numpy's BLAS, all cores)
    over a buffer far larger than any cache; the best of `repeats`."""
    import numpy as np

    cols = 16384
    matrix = np.ones((max(1, buffer_bytes // (4 * cols)), cols), np.float32)
    vector = np.ones(cols, np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        matrix @ vector
        best = min(best, clock() - start)
    return matrix.nbytes / best / GB


def cache_home() -> Path:
    """mlx-slm's cache root: $MLX_SLM_HOME, else ~/.cache/mlx-slm."""
    return home()


def resolve_bandwidth(override: float | None = None,
                      measure: Callable[[], float] = measure_bandwidth) -> tuple[float, str]:
    """The ceiling in GB/s and where it came from: --bandwidth, Apple's published figure
    for the detected chip, or a measurement made once per machine and cached."""
    if override is not None:
        return float(override), "--bandwidth"
    if sys.platform == "darwin":
        chip = apple_chip_bandwidth(cpu_brand(), os.cpu_count())
        if chip is not None:
            return chip[1], f"Apple's figure for the {chip[0]}"
    path = cache_home() / CACHE_FILE
    key = machine_fingerprint()
    cached = _read_cache(path)
    entry = cached.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("gbs"), (int, float)):
        return float(entry["gbs"]), f"measured {entry.get('date', '')[:10]} (cached)".strip()
    gbs = measure()
    cached[key] = {"gbs": gbs, "method": MEASURE_METHOD,
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_cache(path, cached)
    return gbs, "measured now"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    # A cache that cannot be written costs a re-measurement next time, nothing more.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass


def weight_bytes_read(model) -> int:
    """Bytes of weights one decode step reads: all of them, the tied embedding once (as the
    output projection); an untied embedding only by the one row it looks up."""
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    total = sum(a.nbytes for a in params.values())
    if "lm_head" in model:
        embedding = sum(a.nbytes for name, a in params.items()
                        if name.startswith("transformer.token_embeddings."))
        total -= embedding - embedding // model.args.vocab_size
    return total


def kv_bytes_read(config: dict, prompt_tokens: int, gen_tokens: int, itemsize: int) -> float:
    """Keys and values attention reads per timed token, on average: timed tokens 2..n see
    contexts of prompt + 1 .. prompt + n - 1 positions, whose mean is prompt + n / 2."""
    from mlx_slm.sizes import kv_cache_bytes

    return kv_cache_bytes(config, prompt_tokens + gen_tokens / 2, itemsize)


def roofline_fraction(bytes_per_token: float, tokens_per_s: float, bandwidth_gbs: float
                      ) -> float:
    """Achieved read bandwidth (bytes per token x tok/s) over the ceiling."""
    return bytes_per_token * tokens_per_s / (bandwidth_gbs * GB)
