"""A fine-tuning run's files: the adapter it publishes, the checkpoint it resumes from, and
the memory estimate that refuses a run which will not fit.

ADAPTER_DIR/adapters.safetensors + adapter_config.json   the adapter (mlx-lm's layout)
ADAPTER_DIR/checkpoint/{adapters,optimizer}.safetensors + state.json   what --resume reads
The checkpoint directory is replaced as a whole (store.staging), and the adapter's files
one by one (store.files), so a kill at any moment leaves the previous complete version.
"""

import json
import shutil
from pathlib import Path

from mlx_slm.adapters import ADAPTER_CONFIG, ADAPTER_FILE, save_adapter
from mlx_slm.errors import SlmError
from mlx_slm.sizes import human_bytes

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
# Per token and layer, float32 activations kept for the backward pass, in units of
# model_dim (norms, residuals, attention in and out) and of the FFN width (proj_1's two
# halves, the gated product). With the loading fit check's 10% margin on top: the 270M shape's
# float32 step (batch 4 x 128) peaked at 2.22 GB in MLX, estimated 2.17 GB before it.
ACTIVATIONS_PER_DIM, ACTIVATIONS_PER_FFN = 12, 4


def save_checkpoint(adapter_dir: Path, model, options, optimizer, state: dict) -> None:
    """Replace the checkpoint, then publish its adapter at the top of `adapter_dir`."""
    import mlx.core as mx

    from mlx_slm.store.files import atomic_path
    from mlx_slm.store.staging import staged_directory
    from mlx_slm.training import optimizer_state

    adapter_dir.mkdir(parents=True, exist_ok=True)
    with staged_directory(adapter_dir / CHECKPOINT_DIR, force=True) as tmp:
        save_adapter(tmp, model, options, {"step": state["step"]})
        mx.save_safetensors(str(tmp / OPTIMIZER_FILE), optimizer_state(optimizer))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    for name in (ADAPTER_FILE, ADAPTER_CONFIG):
        with atomic_path(adapter_dir / name) as path:
            shutil.copyfile(adapter_dir / CHECKPOINT_DIR / name, path)


def load_checkpoint(adapter_dir: Path) -> tuple[dict, dict, dict]:
    """(adapter tensors, optimizer state, state.json) of the checkpoint in `adapter_dir`."""
    import mlx.core as mx

    folder = adapter_dir / CHECKPOINT_DIR
    if not (folder / STATE_FILE).is_file():
        raise SlmError(f"{adapter_dir} has no checkpoint to resume from; start without "
                       "--resume.")
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        return (mx.load(str(folder / ADAPTER_FILE)), mx.load(str(folder / OPTIMIZER_FILE)),
                state)
    except (OSError, ValueError, RuntimeError) as err:
        raise SlmError(f"The checkpoint in {folder} cannot be read ({err}); start again "
                       "without --resume.") from None


def check_resumable(state: dict, identity: dict, fingerprint: str) -> None:
    """Refuse to resume a run with other settings or other data than it was started with."""
    if state.get("data_sha256") != fingerprint:
        raise SlmError("The data changed since the checkpoint was written; resuming would not "
                       "continue the same run. Start again without --resume.")
    saved = state.get("settings", {})
    for key, value in identity.items():
        if saved.get(key) != value:
            raise SlmError(f"The checkpoint was made with {key}={saved.get(key)!r}, this run "
                           f"asks for {value!r}; resume with the same settings.")


def check_new_run(adapter_dir: Path, overwrite: bool) -> None:
    """Refuse to start a run over an existing adapter unless told to replace it."""
    if adapter_dir.exists() and not adapter_dir.is_dir():
        raise SlmError(f"{adapter_dir} exists and is not a directory; choose another "
                       "--adapter-path.")
    if (adapter_dir / ADAPTER_FILE).exists() and not overwrite:
        raise SlmError(f"{adapter_dir} already holds an adapter; pass --resume to continue "
                       "its run, --overwrite to replace it, or choose another --adapter-path.")
    if overwrite:
        shutil.rmtree(adapter_dir / CHECKPOINT_DIR, ignore_errors=True)


def adapter_parameters(config: dict, options) -> int:
    """How many parameters the adapter has (LoRA matrices, plus DoRA's magnitudes)."""
    from mlx_slm.lora import TARGETS
    from mlx_slm.sizes import tensor_shapes

    shapes = tensor_shapes(config)
    layers = config["num_transformer_layers"]
    first = layers - (options.num_layers or layers)
    total = 0
    for i in range(first, layers):
        for target in options.targets:
            out, inp = shapes[f"transformer.layers.{i}.{TARGETS[target]}.weight"]
            total += options.rank * (out + inp) + (out if options.dora else 0)
    return total


def training_bytes(model_dir: Path, config: dict, options, dtype: str | None,
                   tokens: int, checkpointed: bool) -> int:
    """Estimated peak: weights, the adapter with its gradient and two Adam moments, the
    activations kept for the backward pass (one block's when checkpointed), and the
    float32 logits with their gradient."""
    from mlx_slm.apps.model_loading import OVERHEAD
    from mlx_slm.model import ModelArgs
    from mlx_slm.sizes import weight_bytes

    args = ModelArgs.from_config(config)
    per_layer = [ACTIVATIONS_PER_DIM * args.model_dim + ACTIVATIONS_PER_FFN * args.ffn_dim(i)
                 for i in range(args.num_transformer_layers)]
    kept = max(per_layer) + args.num_transformer_layers * args.model_dim if checkpointed \
        else sum(per_layer)
    return int(OVERHEAD * (weight_bytes(model_dir, dtype) + 16 * adapter_parameters(config, options)
               + 4 * tokens * kept + 3 * 4 * tokens * args.vocab_size))


def check_training_fits(needed: int, force: bool) -> None:
    """Refuse a run that needs more memory than is available, with the estimate."""
    from mlx_slm.memory import available_bytes

    available = available_bytes()
    if force or available is None or needed <= available:
        return
    raise SlmError(f"This run needs about {human_bytes(needed)} (weights, adapter, optimizer, "
                   f"activations) but only {human_bytes(available)} is available; lower "
                   "--batch-size or --max-seq-length, add --grad-checkpoint, use a quantized "
                   "model (QLoRA), or pass --force to try anyway.")

