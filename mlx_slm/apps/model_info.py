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


def quantization_summary(quantization: dict | None) -> str | None:
    """'4-bit, group size 64' plus the layers a recipe sets apart, e.g. '; 4 layers at 6-bit'."""
    if not quantization:
        return None
    text = f"{quantization['bits']}-bit, group size {quantization['group_size']}"
    layers = [v for v in quantization.values() if isinstance(v, dict)]
    for bits in sorted({v["bits"] for v in layers}):
        n = sum(v["bits"] == bits for v in layers)
        text += f"; {n} layer{'s' if n > 1 else ''} at {bits}-bit"
    skipped = sum(v is False for v in quantization.values())
    if skipped:
        text += f"; {skipped} layer{'s' if skipped > 1 else ''} unquantized"
    return text


def format_info(report: dict) -> str:
    """The text `mlx-slm info` prints: labelled lines, then the per-layer table."""
    from mlx_slm.sizes import human_bytes

    fields = [
        ("path", report["path"]),
        ("source", report["source"]),
        ("parameters", f"{report['parameters']:,}"),
        ("precision", report["precision"]),
        ("dtype", report["dtype"]),
        ("quantization", quantization_summary(report["quantization"])),
        ("weights on disk", human_bytes(report["size_on_disk_gb"] * GB)),
        ("weight memory", human_bytes(report["weight_memory_gb"] * GB)),
        ("bits per weight", f"{report['bits_per_weight']:.2f}"),
        ("tokenizer", report["tokenizer"]),
        ("backend", report["backend"]),
        ("BLAS", report.get("blas")),
        ("kernels", report.get("kernels")),
    ]
    lines = [f"{name:>15}: {value}" for name, value in fields if value is not None]
    lines += ["", "layer  q_heads  kv_heads  ffn_dim      params"]
    lines += [f"{row['layer']:>5}  {row['q_heads']:>7}  {row['kv_heads']:>8}  "
              f"{row['ffn_dim']:>7}  {row['params']:>10,}" for row in report["layers"]]
    return "\n".join(lines)
