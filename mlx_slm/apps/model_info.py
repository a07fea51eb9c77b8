"""`mlx-slm info`: describe a model directory from its config and safetensors headers."""

from pathlib import Path

from mlx_slm.chat_format import METADATA_KEY
from mlx_slm.errors import SlmError
from mlx_slm.memory import GB
from mlx_slm.sizes import footprint, layer_rows
from mlx_slm.weights import read_config


def describe(model_dir: str | Path) -> dict:
    """Size, parameters, precision, per-layer shapes and the runtime, without loading."""
    from mlx_slm.cpu.report import runtime_report

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SlmError(f"Model directory {model_dir} does not exist.")
    config = read_config(model_dir)
    sizes = footprint(model_dir, config)
    meta = config.get(METADATA_KEY) or {}
    tokenizer = model_dir / "tokenizer.model"
    return {
        "path": str(model_dir),
        "source": meta.get("source"),
        "parameters": sizes["parameters"],
        "dtype": sizes["dtype"],
        "precision": sizes["precision"],
        "quantization": config.get("quantization"),
        "size_on_disk_gb": round(sizes["size_on_disk_bytes"] / GB, 4),
        "weight_memory_gb": round(sizes["weight_bytes"] / GB, 4),
        "bits_per_weight": round(sizes["bits_per_weight"], 3),
        "tokenizer": str(tokenizer) if tokenizer.exists() else "missing",
        **runtime_report(),
        "layers": layer_rows(config),
    }
