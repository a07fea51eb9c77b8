"""Merge an adapter into a new model directory (`mlx-slm fuse`), atomically, and report how
closely the fused model follows the unfused one.

The fused layers come out in float (the base's dtype; a quantized base's scales' dtype).
On a quantized base the other layers stay quantized and config.json marks the fused ones
unquantized, unless `quantize` re-quantizes them with the base's own settings; on a float
base `quantize` quantizes the whole model (bits, group size).
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.store.manifest import MANIFEST_FILE
from mlx_slm.weights import CONFIG_FILE, INDEX_FILE


@dataclass
class Fused:
    """What `fuse_directory` wrote."""

    out_dir: Path
    quantization: dict | None
    layers: int
    seconds: float


def _fused_paths(model) -> list[str]:
    from mlx_slm.lora import LoRALinear

    return [path for path, module in model.named_modules() if isinstance(module, LoRALinear)]


def fuse_directory(model_dir, adapter_dir, out_dir, quantize: bool = False, bits: int = 4,
                   group_size: int = 64, force: bool = False) -> Fused:
    """Write `out_dir`: the model of `model_dir` (a directory or a Hub id's conversion) with
    the adapter in `adapter_dir` merged."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    import mlx_slm.lora as lora
    import mlx_slm.quant as quant
    from mlx_slm.adapters import load_adapter
    from mlx_slm.apps.model_loading import resolve_model_dir
    from mlx_slm.loader import load_model
    from mlx_slm.store.files import write_json
    from mlx_slm.store.manifest import write_manifest
    from mlx_slm.store.staging import check_destination, check_disk_space, staged_directory
    from mlx_slm.weights import read_config, read_headers, save_weights

    start = time.perf_counter()
    model_dir, out_dir = resolve_model_dir(str(model_dir)), Path(out_dir).expanduser().absolute()
    if out_dir.exists() and out_dir.resolve() in (model_dir.resolve(),
                                                  Path(adapter_dir).resolve()):
        raise SlmError(f"{out_dir} is an input directory; choose another output directory.")
    check_destination(out_dir, force)
    config = read_config(model_dir)
    base_quantization = config.get("quantization")
    model, _ = load_model(model_dir, prepare=False)  # saved as written, not as run here
    load_adapter(model, adapter_dir)
    paths = _fused_paths(model)
    lora.fuse(model)
    if base_quantization and quantize:
        def predicate(path, module):
            return path in paths and quant.layer_settings(path, module, base_quantization)

        nn.quantize(model, class_predicate=predicate)
        quantization = base_quantization
    elif base_quantization:
        quantization = {**base_quantization, **{path: False for path in paths}}
    elif quantize:
        quantization = quant.quantize(model, bits, group_size)
    else:
        quantization = None
    check_disk_space(out_dir, model)
    out_config = {k: v for k, v in config.items() if k != "quantization"}
    if quantization:
        out_config["quantization"] = quantization
    with staged_directory(out_dir, force) as tmp:
        try:
            save_weights(tmp, dict(tree_flatten(model.parameters())))
            for path in sorted(model_dir.iterdir()):
                if path.is_file() and _carried_over(path.name):
                    shutil.copyfile(path, tmp / path.name)
            write_json(tmp / CONFIG_FILE, out_config)
        except (OSError, RuntimeError) as err:
            raise SlmError(f"Writing {out_dir} failed: {err}.") from None
        read_headers(tmp)
        write_manifest(tmp)
    return Fused(out_dir, quantization, len(paths), time.perf_counter() - start)


def _carried_over(name: str) -> bool:
    return not name.endswith(".safetensors") and name not in (CONFIG_FILE, INDEX_FILE,
                                                               MANIFEST_FILE)


def fuse_report(model_dir, adapter_dir, fused_dir, max_tokens: int | None = 512,
                dtype: str | None = "float32") -> dict:
    """The quality report of the fused model against the base with the adapter unfused:
    perplexity of both, KL(unfused || fused), top-1 agreement, sizes."""
    from mlx_slm.apps.quality import read_text, score
    from mlx_slm.backend import active_backend
    from mlx_slm.loader import load_model
    from mlx_slm.sizes import footprint
    from mlx_slm.tokenizer import TOKENIZER_FILE, Tokenizer
    from mlx_slm.weights import read_config

    model_dir, fused_dir = Path(model_dir), Path(fused_dir)
    text, label = read_text(None)
    tokenizer = Tokenizer(fused_dir / TOKENIZER_FILE)
    ids = tokenizer.encode(text, bos=False)[:max_tokens]
    unfused, _ = load_model(model_dir, dtype, adapter=adapter_dir)
    fused, _ = load_model(fused_dir, dtype)
    start = time.perf_counter()
    result = score(unfused, ids, tokenizer.bos_id, fused)
    return {"text": label, **result, "dtype": dtype or "model", "backend": active_backend(),
            "seconds": time.perf_counter() - start,
            "base": footprint(model_dir, read_config(model_dir)),
            "quant": footprint(fused_dir, read_config(fused_dir))}
