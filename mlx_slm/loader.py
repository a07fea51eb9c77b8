"""load(dir) -> (model, tokenizer): strict, validated, lazy until the one eval at the end."""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

import mlx_slm.cpu.layers as backend
import mlx_slm.quant as quant
from mlx_slm.errors import SlmError
from mlx_slm.model import Model, ModelArgs
from mlx_slm.tokenizer import TOKENIZER_FILE, Tokenizer
from mlx_slm.weights import FLOAT_DTYPES, load_weights, read_config


@dataclass(frozen=True)
class LoadOptions:
    """How to load: a compute dtype override, whether to skip the memory check, and an
    adapter directory to apply without fusing."""

    dtype: str | None = None
    force: bool = False
    adapter: str | None = None


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Accept Apple's CoreNet MLX names, which lack the `transformer.` prefix."""
    if any(k.startswith("transformer.") for k in weights):
        return weights
    return {
        (k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in weights.items()
    }


def check_weights(model: Model, weights: dict[str, mx.array], where: Path) -> None:
    """Every expected tensor present with its shape, nothing unexpected; errors name it."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise SlmError(f"{where}: tensor {missing[0]} is missing{more}; the checkpoint is "
                       "incomplete or does not match config.json.")
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise SlmError(f"{where}: unexpected tensor {unexpected[0]}; the checkpoint does not "
                       "match config.json.")
    for name, param in expected.items():
        if tuple(weights[name].shape) != tuple(param.shape):
            raise SlmError(
                f"{where}: tensor {name} has shape {tuple(weights[name].shape)}, "
                f"config.json implies {tuple(param.shape)}."
            )


def build_model(config: dict) -> Model:
    """An uninitialized model for `config`, quantized layers swapped in where it says."""
    model = Model(ModelArgs.from_config(config))
    if config.get("quantization"):
        quant.apply(model, config["quantization"])
    return model


def cast_floats(model: Model, dtype: mx.Dtype) -> None:
    """Cast floating-point parameters (not quantized weights, which are integers)."""
    model.update(tree_map(
        lambda a: a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a,
        model.parameters(),
    ))


def model_from_weights(config: dict, weights: dict[str, mx.array], where,
                       dtype: str | None = None) -> Model:
    """The one way a model is built from weights: build, sanitize names, check every tensor,
    load strictly, cast floats to `dtype`. Lazy: nothing is computed here."""
    model = build_model(config)
    weights = sanitize(weights)
    check_weights(model, weights, where)
    model.load_weights(list(weights.items()), strict=True)
    if dtype is not None:
        if dtype not in FLOAT_DTYPES:
            raise SlmError(f"Unknown dtype {dtype!r}: choose one of {', '.join(FLOAT_DTYPES)}.")
        cast_floats(model, FLOAT_DTYPES[dtype])
    return model


def load_model(model_dir: Path, dtype: str | None = None, prepare: bool = True,
               adapter: str | Path | None = None) -> tuple[Model, dict]:
    """The model of an MLX (or Hub-layout) directory and its config dict, with the LoRA
    adapter in the directory `adapter` applied (not fused) if given.

    `prepare=False` keeps model.py's formulation on every backend (for parity tests).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SlmError(f"Model directory {model_dir} does not exist.")
    config = read_config(model_dir)
    model = model_from_weights(config, load_weights(model_dir), model_dir, dtype)
    if adapter is not None:
        from mlx_slm.adapters import load_adapter

        load_adapter(model, adapter)
    mx.eval(model.parameters())
    if prepare:
        backend.prepare(model)
    return model, config


def load(model_dir: Path, dtype: str | None = None,
         adapter: str | Path | None = None) -> tuple[Model, Tokenizer]:
    """Load a converted model directory: the model (with `adapter` applied) and its
    tokenizer."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SlmError(f"Model directory {model_dir} does not exist.")
    tokenizer = Tokenizer(model_dir / TOKENIZER_FILE)
    vocab = read_config(model_dir).get("vocab_size")
    if tokenizer.vocab_size != vocab:
        raise SlmError(
            f"{tokenizer.path} has {tokenizer.vocab_size} pieces but config.json's vocab_size "
            f"is {vocab}: it is not this model's tokenizer; copy the Llama-2 tokenizer.model."
        )
    model, _ = load_model(model_dir, dtype, adapter=adapter)
    return model, tokenizer


def model_dtype(model: Model) -> str:
    """The dtype of the model's floating-point parameters, by name."""
    norm = model.transformer.norm.weight.dtype
    return next((name for name, d in FLOAT_DTYPES.items() if d == norm), str(norm))
