"""Quantize a converted model directory into a new one (`mlx-slm quantize`), atomically.

The new directory has the source's layout: quantized weights, config.json with the
"quantization" entry, the source's other files (tokenizer.model, tokenizer_config.json, ...)
and a fresh manifest.json. Nothing is written unless all of it is.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.store.manifest import MANIFEST_FILE
from mlx_slm.tokenizer import TOKENIZER_FILE
from mlx_slm.weights import CONFIG_FILE, INDEX_FILE


@dataclass
class Quantization:
    """What `quantize_directory` wrote, for the summary."""

    src_dir: Path
    out_dir: Path
    quantization: dict
    seconds: float


def quantize_directory(src_dir, out_dir, bits: int = 4, group_size: int = 64,
                       recipe: str | None = None, force: bool = False) -> Quantization:
    """Quantize the unquantized model in `src_dir` into the new directory `out_dir`."""
    from mlx.utils import tree_flatten

    import mlx_slm.quant as quant
    from mlx_slm.loader import load_model
    from mlx_slm.recipes import check_recipe
    from mlx_slm.store.files import write_json
    from mlx_slm.store.manifest import write_manifest
    from mlx_slm.store.staging import (
        check_apart,
        check_destination,
        check_disk_space,
        staged_directory,
    )
    from mlx_slm.weights import read_config, read_headers, save_weights

    start = time.perf_counter()
    src_dir, out_dir = Path(src_dir), Path(out_dir).expanduser().absolute()
    if not src_dir.is_dir():
        raise SlmError(f"Model directory {src_dir} does not exist.")
    config = read_config(src_dir)
    if not (src_dir / TOKENIZER_FILE).is_file():
        # The result could not be loaded (generate would ask for a re-conversion).
        raise SlmError(f"{src_dir} has no {TOKENIZER_FILE}, so it is not a converted model "
                       f"directory; convert and quantize in one step: mlx-slm convert "
                       f"{src_dir} OUT_DIR -q.")
    if quant.is_quantized(config):
        q = config.get("quantization") or {}
        what = f" ({q.get('bits')}-bit, group size {q.get('group_size')})" if q else ""
        raise SlmError(f"{src_dir} is already quantized{what}; quantize the unquantized model "
                       "it was made from.")
    check_apart(src_dir, out_dir)
    check_destination(out_dir, force)
    quant.validate({"bits": bits, "group_size": group_size})
    if recipe is not None:
        check_recipe(recipe, bits)

    model, _ = load_model(src_dir, prepare=False)  # saved as written, not as run here
    quantization = quant.quantize(model, bits, group_size, recipe)
    check_disk_space(out_dir, model)
    weights = dict(tree_flatten(model.parameters()))
    with staged_directory(out_dir, force) as tmp:
        try:
            with _bar(weights) as bar:
                save_weights(tmp, weights, on_progress=bar.update)
            for path in sorted(src_dir.iterdir()):
                if path.is_file() and _carried_over(path.name):
                    shutil.copyfile(path, tmp / path.name)
            write_json(tmp / CONFIG_FILE, {**config, "quantization": quantization})
        except (OSError, RuntimeError) as err:
            # MLX reports a failed write (e.g. a full disk) as RuntimeError.
            raise SlmError(f"Writing {out_dir} failed: {err}.") from None
        read_headers(tmp)  # a short write shows up here, not at load time
        write_manifest(tmp)
    return Quantization(src_dir, out_dir, quantization, time.perf_counter() - start)


def _bar(weights: dict):
    from mlx_slm.progress import progress_bar

    return progress_bar(sum(a.nbytes for a in weights.values()), "Writing weights", unit="B")


def _carried_over(name: str) -> bool:
    """The source's files other than its weights, config and manifest, which are rewritten."""
    return not name.endswith(".safetensors") and name not in (CONFIG_FILE, INDEX_FILE,
                                                               MANIFEST_FILE)
