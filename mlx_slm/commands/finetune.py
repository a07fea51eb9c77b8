"""`mlx-slm finetune`: train a LoRA/DoRA adapter (QLoRA on a quantized model)."""

import json
import sys

import click

from mlx_slm.commands.options import DTYPE_CHOICE, SEED_RANGE, _grouped, model_option

TARGETS = ("qkv_proj", "out_proj", "proj_1", "proj_2")


def _lora(rank, lora_scale, lora_alpha, dropout, targets, num_layers, dora):
    from mlx_slm.lora import LoRAOptions

    scale = lora_alpha / rank if lora_alpha is not None else lora_scale
    return LoRAOptions(rank, scale, dropout, tuple(targets) or TARGETS, num_layers, dora)


def _train(**values):
    from mlx_slm.apps.finetune import TrainOptions

    return TrainOptions(**values)


def _data(**values):
    from mlx_slm.apps.finetune_data import DataOptions

    return DataOptions(**values)


lora_options = _grouped([
    click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True,
                 help="Rank of the adapter matrices."),
    click.option("--lora-scale", type=float, default=20.0, show_default=True,
                 help="Scale of the low-rank update (mlx-lm's default)."),
    click.option("--lora-alpha", type=float, default=None,
                 help="Give alpha instead of the scale: scale = alpha / rank."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
                 show_default=True, help="Dropout on the adapter's input."),
    click.option("--target", "targets", type=click.Choice(TARGETS), multiple=True,
                 help="A layer kind to adapt (repeatable; default: all four)."),
    click.option("--num-layers", type=click.IntRange(min=1), default=None,
                 help="Adapt the last N blocks (default: all)."),
    click.option("--dora", is_flag=True, help="DoRA: also learn each output row's magnitude."),
], ("rank", "lora_scale", "lora_alpha", "dropout", "targets", "num_layers", "dora"), "lora",
    _lora)

train_options = _grouped([
    click.option("--iters", type=click.IntRange(min=1), default=1000, show_default=True,
                 help="Optimizer steps."),
    click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="Train this many passes over the data instead of --iters."),
    click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True),
    click.option("--grad-accumulation", type=click.IntRange(min=1), default=1,
                 show_default=True, help="Batches whose gradients make one step."),
    click.option("--learning-rate", "--lr", "learning_rate", type=float, default=1e-5,
                 show_default=True),
    click.option("--min-learning-rate", type=float, default=0.0, show_default=True,
                 help="Where the cosine decay ends."),
    click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Steps of linear warm-up."),
    click.option("--weight-decay", type=float, default=0.0, show_default=True),
    click.option("--seed", type=SEED_RANGE, default=0, show_default=True,
                 help="Seeds the adapter's start, the batch order and dropout."),
    click.option("--grad-checkpoint", is_flag=True,
                 help="Recompute activations in the backward pass: less memory, slower."),
    click.option("--steps-per-report", type=click.IntRange(min=1), default=10,
                 show_default=True),
    click.option("--steps-per-eval", type=click.IntRange(min=1), default=200,
                 show_default=True, help="Validation loss every N steps (and at the end)."),
    click.option("--val-batches", type=int, default=25, show_default=True,
                 help="Validation batches (-1: all of valid.jsonl)."),
    click.option("--save-every", type=click.IntRange(min=1), default=100, show_default=True,
                 help="Checkpoint every N steps (and at the end)."),
], ("iters", "epochs", "batch_size", "grad_accumulation", "learning_rate",
    "min_learning_rate", "warmup", "weight_decay", "seed", "grad_checkpoint",
    "steps_per_report", "steps_per_eval", "val_batches", "save_every"), "train", _train)

data_options = _grouped([
    click.option("--data", "path", required=True, metavar="PATH",
                 help="A directory with train.jsonl (+ valid.jsonl, test.jsonl) or one JSONL "
                      'file: {"text"}, {"prompt","completion"} or {"messages"} lines.'),
    click.option("--max-seq-length", type=click.IntRange(min=2), default=2048,
                 show_default=True, help="Longest sequence in tokens."),
    click.option("--mask-prompt", is_flag=True,
                 help="Loss on the completion / assistant tokens only."),
    click.option("--chat/--no-chat", "chat", default=None,
                 help="Render prompt/completion data in the Instruct format (default: for "
                      "Instruct models). Chat data always is."),
    click.option("--truncate", is_flag=True,
                 help="Cut sequences longer than --max-seq-length instead of refusing them."),
], ("path", "max_seq_length", "mask_prompt", "chat", "truncate"), "data", _data)


class Printer:
    """Events as JSON lines on stdout, or a progress bar (lines on stderr off a terminal)."""

    def __init__(self, as_json: bool):
        self.as_json, self.bar = as_json, None

    def __call__(self, event: dict) -> None:
        if self.as_json:
            click.echo(json.dumps(event))
            return
        kind = event["event"]
        if kind == "train":
            self._train(event)
        elif kind == "valid":
            self._line(f"step {event['step']}: validation loss {event['val_loss']:.3f}")

    def _train(self, event: dict) -> None:
        from mlx_slm.progress import progress_bar
        from mlx_slm.sizes import human_bytes

        peak = human_bytes(event["peak_memory_bytes"])
        stats = (f"loss {event['loss']:.3f}, lr {event['learning_rate']:.2e}, "
                 f"{event['tokens_per_s']:.0f} tok/s, peak {peak}")
        if self.bar is None:
            self.bar = progress_bar(event["total_steps"], "Training", unit="step")
        self.bar.update(event["step"] - self.bar.n)
        self.bar.set_postfix_str(stats)
        if self.bar.disable:
            click.echo(f"step {event['step']}/{event['total_steps']}: {stats}", err=True)

    def _line(self, text: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command()
@model_option
@data_options
@click.option("--adapter-path", default="adapters", show_default=True, metavar="DIR",
              help="Where the adapter (and its checkpoint) goes.")
@lora_options
@train_options
@click.option("--recipe", type=click.Choice(["corenet"]), default=None,
              help="corenet: Apple's recipe (rank 32, alpha 32, dropout 0.1, AdamW with "
                   "weight decay 0.1, cosine 3e-4 -> 3e-5); it replaces those options.")
@click.option("--dtype", type=DTYPE_CHOICE, default=None,
              help="Compute dtype of the base (default: the model's own).")
@click.option("--resume", is_flag=True, help="Continue the run checkpointed in --adapter-path.")
@click.option("--overwrite", is_flag=True, help="Replace an adapter in --adapter-path.")
@click.option("--force", is_flag=True, help="Train even if the memory check says no.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of progress.")
def finetune(model, data, adapter_path, lora, train, recipe, dtype, resume, overwrite, force,
             as_json):
    """Fine-tune a model with a LoRA adapter (QLoRA on a quantized model).

    Writes adapters.safetensors and adapter_config.json in mlx-lm's layout; use them with
    --adapter on generate, chat, compare, quiz and serve, or merge them with `mlx-slm fuse`.
    Ctrl-C saves the adapter so far; --resume continues the run.
    """
    from mlx_slm.apps.finetune import FinetuneRequest, corenet_recipe
    from mlx_slm.apps.finetune import finetune as run

    request = FinetuneRequest(model, data, adapter_path, lora, train, dtype, resume, overwrite,
                              force)
    if recipe == "corenet":
        request = corenet_recipe(request)
    printer = Printer(as_json)
    try:
        result = run(request, printer)
    finally:
        printer.close()
    if result.cut and not as_json:
        click.echo(f"Cut to --max-seq-length: {', '.join(result.cut[:5])}"
                   f"{' ...' if len(result.cut) > 5 else ''}", err=True)
    if result.interrupted:
        click.echo(f"Interrupted at step {result.steps} of {result.total_steps}: the adapter so "
                   f"far is in {result.adapter_path}; continue with --resume.", err=True)
        sys.exit(130)
    if not as_json:
        click.echo(f"Adapter saved in {result.adapter_path} ({result.steps} steps"
                   + (f", validation loss {result.val_loss:.3f}" if result.val_loss else "")
                   + ")", err=True)
