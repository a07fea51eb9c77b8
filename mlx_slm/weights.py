"""The model-directory format: config.json, safetensors (single or sharded + index).

The same layout is used by Hub checkpoints, by mlx-lm and by us, so these readers serve
the converter (Hub side) and the loader (MLX side) alike. Every reader validates before
it trusts: a malformed file ends in an SlmError naming the file, never a traceback.
"""

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx

from mlx_slm.errors import SlmError
from mlx_slm.store.files import write_json

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
DEFAULT_SHARD_BYTES = 5 * 1024**3
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = {"float16": mx.float16, "bfloat16": mx.bfloat16, "float32": mx.float32}
# safetensors' dtype codes for the float dtypes above.
HEADER_FLOAT_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SlmError(f"{path} is missing: {what} is required.") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SlmError(f"{path} is not valid JSON ({err}); re-download or re-convert it.") from None
    except OSError as err:
        raise SlmError(f"Cannot read {path}: {err.strerror}.") from None
    if not isinstance(data, dict):
        raise SlmError(f"{path} must hold a JSON object.")
    return data


def read_config(model_dir: Path) -> dict:
    return read_json(Path(model_dir) / CONFIG_FILE, "the model's configuration")


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Parse and validate a safetensors header: {name: {dtype, shape, data_offsets}}."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SlmError(f"{path} is truncated (no safetensors header); re-download it.")
            n = int.from_bytes(prefix, "little")
            if n > min(size - 8, MAX_HEADER_BYTES):
                raise SlmError(
                    f"{path} is truncated or not a safetensors file (header of {n} bytes)."
                )
            raw = f.read(n)
    except FileNotFoundError:
        raise SlmError(f"{path} is missing; re-download or re-convert the model.") from None
    except OSError as err:
        raise SlmError(f"Cannot read {path}: {err.strerror}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise SlmError(f"{path} has a corrupt safetensors header; re-download it.") from None
    if not isinstance(header, dict):
        raise SlmError(f"{path} has a corrupt safetensors header; re-download it.")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    for name, entry in header.items():
        _check_entry(path, name, entry, data_size)
    return header


def _check_entry(path: Path, name: str, entry, data_size: int) -> None:
    def bad(why):
        return SlmError(f"{path}: tensor {name!r} {why}; re-download or re-convert the model.")

    if not isinstance(entry, dict):
        raise bad("has a malformed header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise bad(f"has an unsupported dtype {dtype!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise bad("has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise bad("has malformed data offsets")
    if offsets[1] > data_size:
        raise bad("lies beyond the end of the file (the file is truncated)")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise bad(f"has {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a directory: from its index when sharded."""
    model_dir = Path(model_dir)
    index_path = model_dir / INDEX_FILE
    if index_path.exists():
        weight_map = read_json(index_path, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise SlmError(f"{index_path} has no weight_map; re-download or re-convert.")
        names = sorted({str(v) for v in weight_map.values()})
        if any(os.path.basename(n) != n or not n.endswith(".safetensors") for n in names):
            raise SlmError(f"{index_path} names a shard outside the model directory.")
        return [model_dir / n for n in names]
    if (model_dir / SINGLE_FILE).exists():
        return [model_dir / SINGLE_FILE]
    shards = sorted(model_dir.glob("model*.safetensors"))
    if not shards:
        raise SlmError(f"No safetensors weights in {model_dir} (expected {SINGLE_FILE}).")
    return shards


def read_headers(model_dir: Path) -> dict[str, dict]:
    """All tensor headers of a directory, each entry with the file it lives in."""
    entries = {}
    for path in weight_files(model_dir):
        for name, entry in read_safetensors_header(path).items():
            if name in entries:
                raise SlmError(f"Tensor {name!r} appears in two shards of {model_dir}.")
            entries[name] = {**entry, "file": path}
    return entries


def load_weights(model_dir: Path) -> dict[str, mx.array]:
    """Every tensor of a directory, validated first, loaded lazily by MLX."""
    read_headers(model_dir)
    weights = {}
    for path in weight_files(model_dir):
        try:
            weights.update(mx.load(str(path), format="safetensors"))
        except (RuntimeError, ValueError) as err:
            raise SlmError(f"Cannot load {path}: {err}; re-download or re-convert it.") from None
    return weights


def save_weights(out_dir: Path, weights: dict[str, mx.array],
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict[str, str] | None = None,
                 on_progress: Callable[[int], None] | None = None) -> list[str]:
    """Write weights as one file, or as shards plus an index past `max_shard_bytes`.

    Lazy weights (cast, quantized) are computed one tensor at a time before their shard is
    written, so Ctrl-C is answered between tensors rather than after one long save;
    `on_progress(nbytes)` follows each tensor."""
    out_dir = Path(out_dir)
    shards, current, current_bytes = [], {}, 0
    for name in sorted(weights):
        array = weights[name]
        if current and current_bytes + array.nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = {}, 0
        current[name] = array
        current_bytes += array.nbytes
    shards.append(current)
    if len(shards) == 1:
        files = [SINGLE_FILE]
    else:
        files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for file, shard in zip(files, shards):
        for array in shard.values():
            mx.eval(array)
            if on_progress is not None:
                on_progress(array.nbytes)
        mx.save_safetensors(str(out_dir / file), shard, metadata=metadata or {"format": "mlx"})
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(a.nbytes for a in weights.values())},
            "weight_map": {name: file for file, shard in zip(files, shards) for name in shard},
        }
        write_json(out_dir / INDEX_FILE, index)
    return files
