"""Describe a model directory from its config and safetensors headers, without loading it."""

import math
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.weights import DTYPE_BYTES, read_config, read_headers, weight_files

GB = 1e9


def parameter_count(config: dict) -> int:
    """Parameters of the unquantized model a config describes (embedding counted once)."""
    from mlx_slm.synthetic import tensor_shapes

    return sum(math.prod(shape) for shape in tensor_shapes(config).values())


def layer_rows(config: dict) -> list[dict]:
    from mlx_slm.model import ModelArgs

    args = ModelArgs.from_config(config)
    D, hd = args.model_dim, args.head_dim
    rows = []
    for i in range(args.num_transformer_layers):
        q, kv, f = args.num_query_heads[i], args.num_kv_heads[i], args.ffn_dim(i)
        params = (q + 2 * kv) * hd * D + q * hd * D + 3 * f * D + 2 * D + 2 * hd
        rows.append({"layer": i, "q_heads": q, "kv_heads": kv, "ffn_dim": f, "params": params})
    return rows


def describe(model_dir: str | Path) -> dict:
    from mlx_slm.blas import blas_in_use
    from mlx_slm.chat_format import METADATA_KEY

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SlmError(f"Model directory {model_dir} does not exist.")
    config = read_config(model_dir)
    headers = read_headers(model_dir)
    params = parameter_count(config)
    weight_bytes = sum(
        math.prod(e["shape"]) * DTYPE_BYTES[e["dtype"]] for e in headers.values()
    )
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    float_dtypes = sorted({e["dtype"] for e in headers.values() if e["dtype"] in names})
    meta = config.get(METADATA_KEY) or {}
    tokenizer = model_dir / "tokenizer.model"
    return {
        "path": str(model_dir),
        "source": meta.get("source"),
        "parameters": params,
        "dtype": "/".join(names[d] for d in float_dtypes),
        "quantization": config.get("quantization"),
        "size_on_disk_gb": round(sum(p.stat().st_size for p in weight_files(model_dir)) / GB, 4),
        "weight_memory_gb": round(weight_bytes / GB, 4),
        "bits_per_weight": round(8 * weight_bytes / params, 3),
        "tokenizer": str(tokenizer) if tokenizer.exists() else "missing",
        "blas": blas_in_use(),
        "layers": layer_rows(config),
    }
