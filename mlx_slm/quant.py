"""Quantization settings: the one predicate that decides which layers are quantized, and how.

The settings live in config.json under "quantization" in mlx-lm's format:
{"group_size": 64, "bits": 4, "mode": "affine", "<module path>": {...} | false, ...},
where a module path's entry overrides the defaults for that layer (a mixed recipe) or
keeps it unquantized (false). The converter, `mlx-slm quantize` and the loader all call
`layer_settings`, so what is written is what loads, in mlx-lm as in ours.
"""

import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_slm.errors import SlmError
from mlx_slm.recipes import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES

MODE = "affine"
SETTING_KEYS = ("group_size", "bits", "mode")


def validate(quantization) -> dict:
    """Check a config's quantization entry (defaults and per-layer entries); returns it."""
    if not isinstance(quantization, dict):
        raise SlmError("config.json: quantization must be an object with group_size and bits.")
    _check_settings(quantization)
    for path, override in quantization.items():
        if path in SETTING_KEYS or override is False:
            continue
        if not isinstance(override, dict):
            raise SlmError(f"config.json: quantization entry {path!r} must be an object or "
                           "false.")
        _check_settings(override)
    return quantization


def _check_settings(settings: dict) -> None:
    bits, group_size = settings.get("bits"), settings.get("group_size")
    if bits not in SUPPORTED_BITS:
        raise SlmError(f"Unsupported bit width {bits!r}: choose one of {SUPPORTED_BITS}.")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise SlmError(
            f"Unsupported group size {group_size!r}: choose one of {SUPPORTED_GROUP_SIZES}."
        )
    if settings.get("mode", MODE) != MODE:
        raise SlmError(f"Unsupported quantization mode {settings['mode']!r}: mlx-slm reads "
                       f"{MODE!r} quantization only.")


def is_quantized(config: dict) -> bool:
    """Whether a config describes a quantized model (ours, mlx-lm's or a Hub export's)."""
    return bool(config.get("quantization") or config.get("quantization_config"))


def _resolve(path: str, quantization: dict) -> dict | None:
    override = quantization.get(path)
    if override is False:
        return None
    settings = override if isinstance(override, dict) else quantization
    return {"group_size": settings["group_size"], "bits": settings["bits"],
            "mode": settings.get("mode", MODE)}


def layer_settings(path: str, module: nn.Module, quantization: dict) -> dict | None:
    """The {group_size, bits, mode} for the layer at `path`, or None to leave it unquantized."""
    if not hasattr(module, "to_quantized"):
        return None
    settings = _resolve(path, quantization)
    # mlx-lm leaves (and does not record) a layer whose width the group size does not divide;
    # reading its directories needs the same rule. Ours never rely on it: `plan` refuses.
    if settings is None or module.weight.shape[-1] % settings["group_size"]:
        return None
    return settings


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that can be quantized, by module path, in forward order."""
    leaves = tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module))
    return {path: module for path, module in leaves if hasattr(module, "to_quantized")}


def check_paths(model: nn.Module, quantization: dict) -> None:
    """Every per-layer entry names a quantizable layer of `model`."""
    layers = quantizable_layers(model)
    for path in quantization:
        if path not in SETTING_KEYS and path not in layers:
            raise SlmError(f"config.json: quantization names {path!r}, which is not a layer of "
                           "this model; re-quantize from the unquantized model.")


class GroupSizeError(SlmError):
    """A group size that does not divide a layer; `fits` is the largest that divides all."""

    def __init__(self, message: str, fits: int | None):
        super().__init__(message)
        self.fits = fits


def check_widths(model: nn.Module, quantization: dict) -> None:
    """Refuse, naming the layer, a group size that does not divide a quantized layer's width."""
    widths = {path: module.weight.shape[-1] for path, module in quantizable_layers(model).items()}
    for path, width in widths.items():
        settings = _resolve(path, quantization)
        if settings and width % settings["group_size"]:
            fits = [g for g in SUPPORTED_GROUP_SIZES if all(w % g == 0 for w in widths.values())]
            hint = f"choose --q-group-size {fits[-1]}" if fits else "no supported group size fits"
            raise GroupSizeError(f"Group size {settings['group_size']} does not divide the "
                                 f"width {width} of layer {path}; {hint}.",
                                 fits[-1] if fits else None)


def apply(model: nn.Module, quantization: dict) -> None:
    """Swap the layers that the settings quantize for quantized ones (weights uninitialized)."""
    validate(quantization)
    check_paths(model, quantization)
    _swap(model, quantization)


def _swap(model: nn.Module, quantization: dict) -> None:
    def predicate(path, module):
        return layer_settings(path, module, quantization) or False

    nn.quantize(model, class_predicate=predicate)


def plan(model: nn.Module, bits: int = 4, group_size: int = 64,
         recipe: str | None = None) -> dict:
    """The validated "quantization" entry for `model`: defaults plus a recipe's per-layer bits."""
    from mlx_slm.recipes import recipe_overrides

    quantization = validate({"group_size": group_size, "bits": bits, "mode": MODE})
    if recipe is not None:
        layers = list(quantizable_layers(model))
        quantization.update(recipe_overrides(recipe, layers, bits, group_size))
    check_widths(model, quantization)
    return quantization


def quantize(model: nn.Module, bits: int = 4, group_size: int = 64,
             recipe: str | None = None) -> dict:
    """Quantize a loaded model in place; returns the config's "quantization" entry.

    Every Linear layer and the (tied) embedding are quantized; the output projection keeps
    working through the quantized embedding's `as_linear`. `recipe` names a mixed-precision
    recipe (mlx_slm.recipes): `bits` for most layers, more for the sensitive ones. Scales
    and biases take the dtype of the weights they replace (bfloat16 stays bfloat16).

    Works on the model as written (loaded with `prepare=False`): what it returns is the
    format to save. To run the result fast on this backend, call `mlx_slm.cpu.layers.prepare` after.
    A prepared model's packed weights are unpacked first.
    """
    from mlx_slm.cpu.layers import unpack

    unpack(model)
    quantization = plan(model, bits, group_size, recipe)
    _swap(model, quantization)
    return quantization

