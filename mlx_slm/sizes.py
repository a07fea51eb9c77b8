"""Sizes and precisions of a model: the one place that counts parameters and weight bytes,
names a precision, and decides the default float dtype. Read from a config and the
safetensors headers; nothing is loaded.
"""

import math
from pathlib import Path

import mlx.core as mx

from mlx_slm.memory import GB
from mlx_slm.model import ModelArgs
from mlx_slm.weights import (
    DTYPE_BYTES,
    FLOAT_DTYPES,
    HEADER_FLOAT_NAMES,
    read_headers,
    weight_files,
)

# Apple: 3B overflows in float16, use bfloat16. Decided by size, not by name.
BFLOAT16_ABOVE_PARAMETERS = 2_000_000_000


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """The Hub tensor names and shapes that a config implies (unquantized)."""
    args = ModelArgs.from_config(config)
    D, hd = args.model_dim, args.head_dim
    shapes = {"transformer.token_embeddings.weight": (args.vocab_size, D)}
    for i in range(args.num_transformer_layers):
        q, kv, f = args.num_query_heads[i], args.num_kv_heads[i], args.ffn_dim(i)
        p = f"transformer.layers.{i}."
        shapes[p + "attn_norm.weight"] = (D,)
        shapes[p + "attn.qkv_proj.weight"] = ((q + 2 * kv) * hd, D)
        if args.normalize_qk_projections:
            shapes[p + "attn.q_norm.weight"] = (hd,)
            shapes[p + "attn.k_norm.weight"] = (hd,)
        shapes[p + "attn.out_proj.weight"] = (D, q * hd)
        shapes[p + "ffn_norm.weight"] = (D,)
        shapes[p + "ffn.proj_1.weight"] = ((2 if args.ffn_with_glu else 1) * f, D)
        shapes[p + "ffn.proj_2.weight"] = (D, f)
    shapes["transformer.norm.weight"] = (D,)
    if not args.share_input_output_layers:
        shapes["lm_head.weight"] = (args.vocab_size, D)
    return shapes


def parameter_count(config: dict) -> int:
    """Parameters of the unquantized model a config describes (embedding counted once)."""
    return sum(math.prod(shape) for shape in tensor_shapes(config).values())


def layer_rows(config: dict) -> list[dict]:
    """Per layer: query and kv heads, FFN width and parameter count."""
    shapes = tensor_shapes(config)
    args = ModelArgs.from_config(config)
    rows = []
    for i in range(args.num_transformer_layers):
        prefix = f"transformer.layers.{i}."
        params = sum(math.prod(s) for name, s in shapes.items() if name.startswith(prefix))
        rows.append({"layer": i, "q_heads": args.num_query_heads[i],
                     "kv_heads": args.num_kv_heads[i], "ffn_dim": args.ffn_dim(i),
                     "params": params})
    return rows


def default_dtype(config: dict) -> str:
    """float16, except bfloat16 for models past 2B parameters (3B overflows in float16)."""
    return "bfloat16" if parameter_count(config) > BFLOAT16_ABOVE_PARAMETERS else "float16"


def weight_bytes(model_dir: Path, dtype: str | None = None) -> int:
    """Bytes of a directory's weights once loaded (float tensors recast to `dtype` if given)."""
    total = 0
    for entry in read_headers(model_dir).values():
        size = DTYPE_BYTES[entry["dtype"]]
        if dtype and entry["dtype"] in HEADER_FLOAT_NAMES:
            size = FLOAT_DTYPES[dtype].size
        total += math.prod(entry["shape"]) * size
    return total


def config_weight_bytes(config: dict, float_bytes: int = 2) -> int:
    """Bytes of a config's weights once loaded (quantized where it says), without allocating.

    Floating tensors are counted at `float_bytes` each (2 for float16/bfloat16).
    """
    from mlx.utils import tree_flatten

    from mlx_slm.loader import build_model

    # MLX is lazy: building the model and its quantized layers computes nothing.
    params = tree_flatten(build_model(config).parameters())
    return sum(a.size * float_bytes if mx.issubdtype(a.dtype, mx.floating) else a.nbytes
               for _, a in params)


def kv_cache_bytes(config: dict, tokens: float, dtype_size: int = 2) -> int:
    """Keys and values of every layer for `tokens` positions, batch 1."""
    heads = config.get("num_kv_heads") or []
    return int(2 * sum(heads) * config.get("head_dim", 0) * tokens * dtype_size)


def float_dtypes(headers: dict) -> list[str]:
    """The float dtypes a directory's tensors are stored in, by name, sorted."""
    return sorted({HEADER_FLOAT_NAMES[e["dtype"]] for e in headers.values()
                   if e["dtype"] in HEADER_FLOAT_NAMES})


def precision_label(config: dict, headers: dict) -> str:
    """'float16', '4-bit g64', or 'mixed 4/6-bit g64' (every bit width the layers use)."""
    quantization = config.get("quantization")
    if not quantization:
        return "/".join(float_dtypes(headers))
    layers = [v for v in quantization.values() if isinstance(v, dict)]
    bits = sorted({quantization["bits"], *(v["bits"] for v in layers)})
    groups = sorted({quantization["group_size"], *(v["group_size"] for v in layers)})
    kind = f"{bits[0]}-bit" if len(bits) == 1 else "mixed " + "/".join(map(str, bits)) + "-bit"
    return f"{kind} g{'/'.join(map(str, groups))}"


def footprint(model_dir: Path, config: dict) -> dict:
    """Size on disk, weight memory, bits per weight and precision, from headers alone."""
    headers = read_headers(model_dir)
    params = parameter_count(config)
    weights = weight_bytes(model_dir)
    return {
        "path": str(model_dir),
        "precision": precision_label(config, headers),
        "dtype": "/".join(float_dtypes(headers)),
        "parameters": params,
        "size_on_disk_bytes": sum(p.stat().st_size for p in weight_files(model_dir)),
        "weight_bytes": weights,
        "bits_per_weight": 8 * weights / params,
        "float16_ratio": weights / (2 * params),
    }


def human_bytes(n: float) -> str:
    """'1.23 GB' from 0.1 GB up, else '45.6 MB'."""
    return f"{n / GB:.2f} GB" if n >= 0.1 * GB else f"{n / 1e6:.1f} MB"
