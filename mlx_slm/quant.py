"""Quantization settings: the one predicate that decides which layers are quantized.

The settings live in config.json under "quantization" in mlx-lm's format:
{"group_size": 64, "bits": 4, "mode": "affine", "<module path>": {...} | false, ...}.
The converter and the loader both call `layer_settings`, so what is written is what loads.
"""

import mlx.nn as nn

from mlx_slm.errors import SlmError

SUPPORTED_BITS = (2, 3, 4, 5, 6, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)


def validate(quantization) -> dict:
    """Check a config's quantization entry; returns it."""
    if not isinstance(quantization, dict):
        raise SlmError("config.json: quantization must be an object with group_size and bits.")
    bits, group_size = quantization.get("bits"), quantization.get("group_size")
    if bits not in SUPPORTED_BITS:
        raise SlmError(f"Unsupported bit width {bits!r}: choose one of {SUPPORTED_BITS}.")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise SlmError(
            f"Unsupported group size {group_size!r}: choose one of {SUPPORTED_GROUP_SIZES}."
        )
    for override in quantization.values():
        if isinstance(override, dict):
            validate(override)
    return quantization


def layer_settings(path: str, module: nn.Module, quantization: dict) -> dict | None:
    """The {group_size, bits, mode} for the layer at `path`, or None to leave it unquantized."""
    if not hasattr(module, "to_quantized"):
        return None
    override = quantization.get(path)
    if override is False:
        return None
    settings = override if isinstance(override, dict) else quantization
    return {
        "group_size": settings["group_size"],
        "bits": settings["bits"],
        "mode": settings.get("mode", "affine"),
    }


def apply(model: nn.Module, quantization: dict) -> None:
    """Swap the layers that the settings quantize for quantized ones (weights uninitialized)."""
    validate(quantization)

    def predicate(path, module):
        return layer_settings(path, module, quantization) or False

    nn.quantize(model, class_predicate=predicate)


def quantize(model: nn.Module, bits: int = 4, group_size: int = 64,
             recipe: str | None = None) -> dict:
    """Quantize a loaded model in place; returns the config's "quantization" entry.

    Every Linear layer and the (tied) embedding are quantized; the output projection keeps
    working through the quantized embedding's `as_linear`. `recipe` names a mixed-precision
    recipe (per-layer bit widths); None quantizes every layer alike.
    """
    if recipe is not None:
        raise SlmError(f"Unknown quantization recipe {recipe!r}.")
    quantization = validate({"group_size": group_size, "bits": bits, "mode": "affine"})

    def predicate(path, module):
        return layer_settings(path, module, quantization) or False

    nn.quantize(model, class_predicate=predicate)
    from mlx_slm import backend  # the new quantized layers get the backend's forward too

    backend.prepare(model)
    return quantization
