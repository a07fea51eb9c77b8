"""Adapter directories in mlx-lm's layout: `adapters.safetensors` (the adapter tensors by
their full names) and `adapter_config.json` ({"fine_tune_type": "lora" | "dora",
"num_layers": N, "lora_parameters": {"rank", "scale", "dropout", "keys"}}), so either
tool reads the other's. `keys` are module paths inside a block ("attn.qkv_proj"); mlx-lm
adapts every linear layer of a block when they are absent, which are our four targets.
"""

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

import mlx_slm.lora as lora
from mlx_slm.errors import SlmError

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def adapter_config(options: lora.LoRAOptions, total_layers: int) -> dict:
    """mlx-lm's adapter_config.json entries for `options`."""
    return {
        "fine_tune_type": "dora" if options.dora else "lora",
        "num_layers": options.num_layers or total_layers,
        "lora_parameters": {"rank": options.rank, "scale": options.scale,
                            "dropout": options.dropout,
                            "keys": [lora.TARGETS[t] for t in options.targets]},
    }


def options_from_config(config: dict, total_layers: int, where) -> lora.LoRAOptions:
    """LoRAOptions from an adapter_config.json (ours or mlx-lm's)."""
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise SlmError(f"{where}: fine_tune_type {kind!r} is not an adapter (mlx-slm reads "
                       "lora and dora adapters; fuse a full fine-tune with mlx-lm).")
    params = config.get("lora_parameters")
    if not isinstance(params, dict) or "rank" not in params or "scale" not in params:
        raise SlmError(f"{where}: lora_parameters must give rank and scale.")
    by_path = {path: name for name, path in lora.TARGETS.items()}
    keys = params.get("keys") or list(by_path)
    unknown = [k for k in keys if k not in by_path]
    if unknown:
        raise SlmError(f"{where}: adapter key {unknown[0]!r} is not a layer mlx-slm adapts "
                       f"(it adapts {', '.join(by_path)}).")
    num_layers = config.get("num_layers") or total_layers
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        raise SlmError(f"{where}: num_layers must be an integer, got {num_layers!r}.")
    return lora.LoRAOptions(
        rank=int(params["rank"]), scale=float(params["scale"]),
        dropout=float(params.get("dropout", 0.0)),
        targets=tuple(by_path[k] for k in keys),
        num_layers=None if num_layers <= 0 or num_layers >= total_layers else num_layers,
        dora=kind == "dora",
    )


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not Path(adapter_dir).is_dir():
        raise SlmError(f"Adapter directory {adapter_dir} does not exist.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlmError(f"{adapter_dir} has no {ADAPTER_CONFIG}: it is not an adapter "
                       "directory (mlx-slm finetune or mlx_lm.lora writes one).") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise SlmError(f"{path} is not valid JSON: {err}.") from None
    if not isinstance(config, dict):
        raise SlmError(f"{path} must hold a JSON object.")
    return config


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> lora.LoRAOptions:
    """Wrap `model`'s layers as the adapter directory says and load its tensors."""
    adapter_dir = Path(adapter_dir)
    options = options_from_config(read_adapter_config(adapter_dir), len(model.layers),
                                  adapter_dir / ADAPTER_CONFIG)
    weights_path = adapter_dir / ADAPTER_FILE
    if not weights_path.is_file():
        raise SlmError(f"{adapter_dir} has no {ADAPTER_FILE}.")
    try:
        weights = mx.load(str(weights_path))
    except (RuntimeError, ValueError) as err:
        raise SlmError(f"{weights_path} is not a readable safetensors file: {err}.") from None
    lora.apply(model, options)
    lora.load_adapter_weights(model, weights, weights_path)
    return options


def save_adapter(adapter_dir: Path, model: nn.Module, options: lora.LoRAOptions,
                 metadata: dict | None = None) -> None:
    """Write the adapter's two files into `adapter_dir` (an existing, staged directory)."""
    adapter_dir = Path(adapter_dir)
    mx.save_safetensors(str(adapter_dir / ADAPTER_FILE), lora.adapter_weights(model),
                        metadata={k: str(v) for k, v in (metadata or {}).items()})
    config = adapter_config(options, len(model.layers))
    (adapter_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
