"""Models at each benchmarked precision: float casts, uniform and mixed quantization.

A model is built lazily from float weights (seeded random or a converted directory's),
cast and quantized by the same functions `mlx-slm convert` uses, then written as an
ordinary model directory, so both our loader and mlx-lm's load exactly the same files.
"""

from dataclasses import dataclass
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.sizes import default_dtype

FLOAT_PRECISIONS = ("float32", "float16", "bfloat16")
QUANTIZED_BITS = {"8bit": 8, "4bit": 4}
GROUP_SIZE = 64


@dataclass(frozen=True)
class Precision:
    """How a model's weights are stored: a float dtype, or quantized with that dtype's scales."""

    name: str
    dtype: str
    bits: int | None = None
    recipe: str | None = None

    @property
    def quantized(self) -> bool:
        return self.bits is not None


MIXED_BASE_BITS = 4  # mixed recipes raise some layers above this base width


def recipe_names() -> list[str]:
    """The mixed-precision recipes of mlx_slm.recipes, in its order."""
    from mlx_slm.recipes import RECIPES

    return list(RECIPES)


def mixed_name(recipe: str) -> str:
    """How the benchmark names a recipe on its base width: '4bit-early-embed'."""
    return f"{MIXED_BASE_BITS}bit-{recipe}"


def precision_names() -> list[str]:
    """Every precision the benchmark can build, in sweep order."""
    return [*FLOAT_PRECISIONS, *QUANTIZED_BITS, *map(mixed_name, recipe_names())]


def precision(name: str, config: dict) -> Precision:
    """The precision called `name` for a model of `config`."""
    if name in FLOAT_PRECISIONS:
        return Precision(name, name)
    if name in QUANTIZED_BITS:
        return Precision(name, default_dtype(config), bits=QUANTIZED_BITS[name])
    recipes = {mixed_name(recipe): recipe for recipe in recipe_names()}
    if name in recipes:
        return Precision(name, default_dtype(config), bits=MIXED_BASE_BITS,
                         recipe=recipes[name])
    raise SlmError(f"Unknown precision {name!r}: choose from {', '.join(precision_names())}.")


def stored_precision(model_dir: Path, config: dict) -> Precision:
    """The precision a converted directory holds, named as the benchmark names its own."""
    from mlx_slm.weights import HEADER_FLOAT_NAMES, read_headers

    dtypes = {HEADER_FLOAT_NAMES[e["dtype"]] for name, e in read_headers(model_dir).items()
              if name.endswith("norm.weight") and e["dtype"] in HEADER_FLOAT_NAMES}
    dtype = "/".join(sorted(dtypes)) or "unknown"
    quantization = config.get("quantization")
    if not quantization:
        return Precision(dtype, dtype)
    bits, group_size = quantization.get("bits"), quantization.get("group_size")
    name = f"{bits}bit"
    if any(isinstance(v, (dict, bool)) for v in quantization.values()):
        name += "-mixed"  # per-layer overrides
    if group_size != GROUP_SIZE:
        name += f"-g{group_size}"
    return Precision(name, dtype, bits=bits)


def model_at(config: dict, weights: dict, precision: Precision, where: str):
    """A lazily computed model at `precision` from float `weights`, and its config."""
    import mlx_slm.quant as quant
    from mlx_slm.loader import model_from_weights

    config = {k: v for k, v in config.items() if k != "quantization"}
    config["torch_dtype"] = precision.dtype
    model = model_from_weights(config, weights, where, precision.dtype)
    if precision.quantized:
        config["quantization"] = quant.quantize(model, bits=precision.bits,
                                                group_size=GROUP_SIZE, recipe=precision.recipe)
    return model, config


def parameter_bytes(model) -> int:
    """Bytes of all the model's parameters (known from shapes; nothing is evaluated)."""
    from mlx.utils import tree_flatten

    return sum(a.nbytes for _, a in tree_flatten(model.parameters()))


def write_model_dir(out_dir: Path, model, config: dict) -> Path:
    """Evaluate a lazy model layer by layer and write it as a model directory."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_slm.store.files import write_json
    from mlx_slm.weights import CONFIG_FILE, save_weights

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One layer at a time keeps the float intermediates of quantization small.
    for layer in model.layers:
        mx.eval(layer.parameters())
    mx.eval(model.parameters())
    save_weights(out_dir, dict(tree_flatten(model.parameters())))
    write_json(out_dir / CONFIG_FILE, config)
    return out_dir
