"""The Python API for fine-tuning: `from mlx_slm import finetune`.

    from mlx_slm import finetune
    result = finetune("apple/OpenELM-270M-Instruct", "examples/finetune/capitals",
                      adapter_path="adapters", iters=300, learning_rate=2e-4, mask_prompt=True)
    model, tokenizer = mlx_slm.load(...)  # or: mlx-slm generate --adapter adapters

Keyword options are the CLI's, by their field names in DataOptions, LoRAOptions,
TrainOptions and FinetuneRequest (rank, scale, dropout, targets, num_layers, dora, iters,
epochs, batch_size, learning_rate, max_seq_length, mask_prompt, resume, ...).
"""

from collections.abc import Callable
from dataclasses import fields, replace

from mlx_slm.apps.finetune import FinetuneRequest, FinetuneResult, TrainOptions, corenet_recipe
from mlx_slm.apps.finetune import finetune as run
from mlx_slm.apps.finetune_data import DataOptions
from mlx_slm.lora import LoRAOptions


def finetune(model: str, data: str, *, recipe: str | None = None,
             on_event: Callable[[dict], None] | None = None, **options) -> FinetuneResult:
    """Train an adapter for `model` (a directory or Hub id) on `data` (a directory with
    train.jsonl and valid.jsonl, or one JSONL file). `recipe="corenet"` starts from Apple's
    hyperparameters; `on_event` receives the progress events the CLI prints."""
    groups = {}
    for cls in (DataOptions, LoRAOptions, TrainOptions, FinetuneRequest):
        names = {f.name for f in fields(cls)} - {"model", "data", "path", "lora", "train"}
        groups[cls] = {k: options.pop(k) for k in list(options) if k in names}
    if options:
        raise TypeError(f"finetune() got an unknown option {next(iter(options))!r}")
    if "targets" in groups[LoRAOptions]:
        groups[LoRAOptions]["targets"] = tuple(groups[LoRAOptions]["targets"])
    request = FinetuneRequest(model, DataOptions(str(data), **groups[DataOptions]),
                              lora=LoRAOptions(**groups[LoRAOptions]),
                              train=TrainOptions(**groups[TrainOptions]),
                              **groups[FinetuneRequest])
    if recipe == "corenet":
        request = corenet_recipe(request)
        request = replace(request, train=replace(request.train, **groups[TrainOptions]))
    elif recipe is not None:
        raise ValueError(f"Unknown recipe {recipe!r}: the one recipe is 'corenet'.")
    return run(request, on_event or (lambda event: None))
