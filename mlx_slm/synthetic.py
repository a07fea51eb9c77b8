"""Seeded random OpenELM checkpoints in the Hub's exact layout, at real or tiny shapes.

Real weights cannot always be downloaded (benchmarks, tests, CI); these have the published
configs' shapes and the Hub's tensor names, so everything downstream runs unchanged.
"""

import json
from importlib import resources
from pathlib import Path

import mlx.core as mx

from mlx_slm.errors import SlmError
from mlx_slm.sizes import tensor_shapes
from mlx_slm.weights import (
    CONFIG_FILE,
    DEFAULT_SHARD_BYTES,
    FLOAT_DTYPES,
    save_weights,
    write_json,
)

SIZE_ALIASES = {"270M": "270M", "450M": "450M", "1.1B": "1_1B", "1_1B": "1_1B", "3B": "3B"}


def published_configs() -> dict[str, dict]:
    """The config.json of each of the eight Hub checkpoints, keyed by repo id."""
    text = resources.files("mlx_slm").joinpath("data/openelm_configs.json").read_text()
    return json.loads(text)


def published_config(name: str) -> dict:
    """A published config by size ('270M', '1.1B', '3B-Instruct', ...) or Hub repo id."""
    configs = published_configs()
    if name in configs:
        return dict(configs[name])
    base, _, suffix = name.partition("-")
    if base in SIZE_ALIASES and suffix in ("", "Instruct"):
        repo = f"apple/OpenELM-{SIZE_ALIASES[base]}" + ("-Instruct" if suffix else "")
        return dict(configs[repo])
    sizes = ", ".join(dict.fromkeys(SIZE_ALIASES.values())).replace("1_1B", "1.1B")
    raise SlmError(f"Unknown OpenELM size {name!r}: choose one of {sizes} (optionally -Instruct).")


def tiny_config(
    num_layers: int = 3,
    model_dim: int = 64,
    head_dim: int = 16,
    query_heads: tuple[int, ...] = (4, 4, 8),
    kv_heads: tuple[int, ...] = (1, 2, 2),
    ffn_multipliers: tuple[float, ...] = (0.5, 1.5, 2.5),
    vocab_size: int = 32000,
    **overrides,
) -> dict:
    """A small config with per-layer heads and FFN widths that vary like the real ones."""
    config = dict(published_configs()["apple/OpenELM-270M"])
    config.update(
        num_transformer_layers=num_layers,
        model_dim=model_dim,
        head_dim=head_dim,
        num_query_heads=list(query_heads[:num_layers]),
        num_kv_heads=list(kv_heads[:num_layers]),
        ffn_multipliers=list(ffn_multipliers[:num_layers]),
        ffn_dim_divisor=16,
        vocab_size=vocab_size,
    )
    config.update(overrides)
    return config


def random_weights(config: dict, seed: int = 0, dtype: mx.Dtype = mx.float32,
                   std: float = 0.02) -> dict[str, mx.array]:
    """Seeded weights: N(0, std) matrices, norm weights near 1 (so a bad norm shows)."""
    key = mx.random.key(seed)
    weights = {}
    for name, shape in tensor_shapes(config).items():
        key, sub = mx.random.split(key)
        if len(shape) == 1:
            w = 1.0 + 0.1 * mx.random.normal(shape, key=sub)
        else:
            w = std * mx.random.normal(shape, key=sub)
        weights[name] = w.astype(dtype)
    return weights


def write_hub_checkpoint(out_dir: Path, config: dict, seed: int = 0, dtype: str = "float32",
                         max_shard_bytes: int | None = None) -> Path:
    """Write config.json + safetensors as the Hub stores them; returns `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = random_weights(config, seed, FLOAT_DTYPES[dtype])
    mx.eval(weights)
    write_json(out_dir / CONFIG_FILE, {**config, "torch_dtype": dtype})
    save_weights(out_dir, weights, max_shard_bytes or DEFAULT_SHARD_BYTES, {"format": "pt"})
    return out_dir
