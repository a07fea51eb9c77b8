"""Fine-tune a model with a LoRA/DoRA adapter (QLoRA on a quantized model): `finetune`.

Everything that can be refused is refused before anything is written: the data (every
line), the adapter directory, a resume that would not continue the same run, and a run
that will not fit in memory. The run reports through `on_event(dict)`: "train" every
`steps_per_report` steps, "valid", "checkpoint", and one "done" or "interrupted".
Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and returns; `resume`
continues it. Batch order and dropout draws are functions of (seed, step), so a resumed
run reaches the same adapter as one that was never interrupted.
"""

import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mlx_slm.apps.finetune_data import DataOptions
from mlx_slm.errors import SlmError
from mlx_slm.generation import tokens_per_second
from mlx_slm.lora import LoRAOptions

# Apple's CoreNet recipe for every OpenELM size (peft_configs/openelm_lora_*.yaml).
CORENET_LORA = LoRAOptions(rank=32, scale=1.0, dropout=0.1)  # alpha 32 / rank 32
CORENET_LR = (3e-4, 3e-5)


@dataclass(frozen=True)
class TrainOptions:
    """How to train. `epochs`, when given, sets the number of steps instead of `iters`."""

    iters: int = 1000
    epochs: float | None = None
    batch_size: int = 4
    grad_accumulation: int = 1
    learning_rate: float = 1e-5
    min_learning_rate: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    grad_checkpoint: bool = False
    steps_per_report: int = 10
    steps_per_eval: int = 200
    val_batches: int = 25
    save_every: int = 100


@dataclass(frozen=True)
class FinetuneRequest:
    """One run: the model, its data, the adapter's shape and where it goes, how to train."""

    model: str
    data: DataOptions
    adapter_path: str = "adapters"
    lora: LoRAOptions = LoRAOptions()
    train: TrainOptions = TrainOptions()
    dtype: str | None = None
    resume: bool = False
    overwrite: bool = False
    force: bool = False


@dataclass
class FinetuneResult:
    adapter_path: Path
    steps: int
    total_steps: int
    train_loss: float | None
    val_loss: float | None
    interrupted: bool = False
    cut: list[str] = field(default_factory=list)


def corenet_recipe(request: FinetuneRequest) -> FinetuneRequest:
    """Apple's hyperparameters: rank 32, alpha 32, dropout 0.1, every target, cosine
    3e-4 -> 3e-5 (AdamW)."""
    lr, min_lr = CORENET_LR
    return replace(request, lora=replace(CORENET_LORA, num_layers=request.lora.num_layers),
                   train=replace(request.train, learning_rate=lr, min_learning_rate=min_lr,
                                 weight_decay=0.1))


def _identity(request: FinetuneRequest, model_dir: Path) -> dict:
    """The settings that decide a run's result: a resumed run must have the same."""
    train = asdict(request.train)
    for key in ("steps_per_report", "steps_per_eval", "val_batches", "save_every"):
        train.pop(key)
    lora = asdict(request.lora)
    lora["targets"] = list(lora["targets"])
    data = asdict(request.data)
    data.pop("path")
    return {"model": str(model_dir.resolve()), "dtype": request.dtype, **lora, **data, **train}


class StopSignals:
    """Ctrl-C and SIGTERM ask the loop to stop after the current step; a second Ctrl-C
    interrupts at once. Installed in the main thread only (signals arrive there)."""

    def __init__(self):
        self.received: int | None = None

    def _handler(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def batch_order(count: int, batch_size: int, seed: int, index: int) -> list[int]:
    """Example indices of micro-batch `index`: a fresh seeded shuffle every epoch, the
    incomplete last batch of an epoch dropped (as mlx-lm does)."""
    import numpy as np

    per_epoch = count // batch_size
    epoch, k = divmod(index, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(count)
    return order[k * batch_size : (k + 1) * batch_size].tolist()


def _valid_batches(examples, batch_size: int, max_length: int, limit: int):
    from mlx_slm.training import make_batch

    starts = range(0, len(examples), batch_size)
    if limit > 0:
        starts = starts[:limit]
    return [make_batch(examples[s : s + batch_size], max_length) for s in starts]


@dataclass
class Plan:
    """What `plan_run` checked and found: everything a run needs except the model."""

    model_dir: Path
    config: dict
    data: object  # finetune_data.Dataset
    fingerprint: str
    total: int
    identity: dict
    adapter_dir: Path
    checkpoint: tuple | None  # (adapter tensors, optimizer state, state.json) on resume


def plan_run(request: FinetuneRequest) -> Plan:
    """Check everything that can be refused (model, data, adapter directory, resume, memory)
    before anything is loaded or written."""
    import mlx_slm.apps.finetune_state as files
    from mlx_slm.apps.finetune_data import load_dataset
    from mlx_slm.apps.model_loading import resolve_model_dir
    from mlx_slm.chat_format import is_instruct
    from mlx_slm.tokenizer import TOKENIZER_FILE, Tokenizer
    from mlx_slm.weights import read_config

    train = request.train
    model_dir = resolve_model_dir(request.model)
    config = read_config(model_dir)
    if not (model_dir / TOKENIZER_FILE).is_file():
        raise SlmError(f"{model_dir} has no {TOKENIZER_FILE}; convert the model first.")
    request.lora.check(config["num_transformer_layers"])
    chat = request.data.chat
    if chat is None:
        chat = is_instruct(config, model_dir.name)
    data = load_dataset(request.data, Tokenizer(model_dir / TOKENIZER_FILE), chat)
    count = len(data.splits["train"])
    if count < train.batch_size:
        raise SlmError(f"{data.files['train']} has {count} examples, fewer than "
                       f"--batch-size {train.batch_size}.")
    per_epoch = count // train.batch_size // train.grad_accumulation
    total = max(1, round(train.epochs * per_epoch)) if train.epochs else train.iters
    adapter_dir = Path(request.adapter_path).expanduser()
    identity, fingerprint = _identity(request, model_dir), data.fingerprint()
    checkpoint = None
    if request.resume:
        checkpoint = files.load_checkpoint(adapter_dir)
        files.check_resumable(checkpoint[2], identity, fingerprint)
    else:
        files.check_new_run(adapter_dir, request.overwrite)
    tokens = train.batch_size * request.data.max_seq_length
    files.check_training_fits(files.training_bytes(
        model_dir, config, request.lora, request.dtype, tokens, train.grad_checkpoint),
        request.force)
    return Plan(model_dir, config, data, fingerprint, total, identity, adapter_dir, checkpoint)


def build(request: FinetuneRequest, plan: Plan):
    """(model with fresh or resumed adapters, its optimizer, the first step to run)."""
    import mlx.core as mx
    import mlx.optimizers as optim

    import mlx_slm.lora as lora
    from mlx_slm.apps.finetune_state import CHECKPOINT_DIR
    from mlx_slm.loader import load_model
    from mlx_slm.training import checkpoint_gradients, restore_optimizer_state, schedule

    train = request.train
    # model.py's formulation: the CPU backend's swapped layers are for inference only.
    model, _ = load_model(plan.model_dir, request.dtype, prepare=False)
    mx.random.seed(train.seed)
    lora.apply(model, request.lora)
    if train.grad_checkpoint:
        checkpoint_gradients(model)
    optimizer = optim.AdamW(
        learning_rate=schedule(train.learning_rate, plan.total, train.warmup,
                               train.min_learning_rate),
        weight_decay=train.weight_decay)
    optimizer.init(model.trainable_parameters())
    start = 0
    if plan.checkpoint is not None:
        adapter, optimizer_state, state = plan.checkpoint
        lora.load_adapter_weights(model, adapter, plan.adapter_dir / CHECKPOINT_DIR)
        restore_optimizer_state(optimizer, optimizer_state)
        start = state["step"]
    mx.eval(model.parameters(), optimizer.state)
    return model, optimizer, start


def finetune(request: FinetuneRequest,
             on_event: Callable[[dict], None] = lambda event: None) -> FinetuneResult:
    """Train an adapter as `request` says; see the module docstring."""
    import mlx.core as mx

    import mlx_slm.apps.finetune_state as files
    from mlx_slm.memory import mlx_peak_bytes, reset_mlx_peak
    from mlx_slm.training import TrainStep, evaluate, make_batch

    train, max_length = request.train, request.data.max_seq_length
    plan = plan_run(request)
    model, optimizer, start = build(request, plan)
    step_fn = TrainStep(model, optimizer, train.grad_accumulation)
    examples, total = plan.data.splits["train"], plan.total
    valid = _valid_batches(plan.data.splits.get("valid", []), train.batch_size, max_length,
                           train.val_batches)

    def validate(step: int) -> float | None:
        if not valid:
            return None
        model.eval()
        loss = evaluate(model, valid)
        model.train()
        on_event({"event": "valid", "step": step, "val_loss": loss})
        return loss

    def save(step: int) -> None:
        files.save_checkpoint(plan.adapter_dir, model, request.lora, optimizer, {
            "step": step, "total_steps": total, "data_sha256": plan.fingerprint,
            "settings": plan.identity})
        on_event({"event": "checkpoint", "step": step, "path": str(plan.adapter_dir)})

    reset_mlx_peak()
    window_loss, window_tokens, window_count, trained = 0.0, 0, 0, 0
    clock, last_loss, val_loss = time.perf_counter(), None, None
    step = start
    with StopSignals().installed() as stop:
        while step < total and stop.received is None:
            # Dropout's draws depend on the step alone, so a resumed run repeats them.
            mx.random.seed(train.seed * 1_000_003 + step)
            for j in range(train.grad_accumulation):
                order = batch_order(len(examples), train.batch_size, train.seed,
                                    step * train.grad_accumulation + j)
                loss, count = step_fn(make_batch([examples[i] for i in order], max_length))
                mx.eval(loss, count, model.state, optimizer.state)
                window_loss += loss.item()
                window_count += 1
                window_tokens += int(count.item())
            step += 1
            if step % train.steps_per_report == 0 or step == total:
                elapsed = time.perf_counter() - clock
                last_loss = window_loss / window_count
                trained += window_tokens
                on_event({"event": "train", "step": step, "total_steps": total,
                          "loss": last_loss, "learning_rate": optimizer.learning_rate.item(),
                          "tokens_per_s": tokens_per_second(window_tokens, elapsed),
                          "trained_tokens": trained,
                          "peak_memory_bytes": mlx_peak_bytes()})
                window_loss, window_tokens, window_count = 0.0, 0, 0
                clock = time.perf_counter()
            paused = time.perf_counter()  # validation and saving are not training time
            if step % train.steps_per_eval == 0 or step == total:
                val_loss = validate(step)
            if step % train.save_every == 0 or step == total:
                save(step)
            clock += time.perf_counter() - paused
        interrupted = step < total
        if interrupted and step > start:
            save(step)
    on_event({"event": "interrupted" if interrupted else "done", "step": step,
              "total_steps": total, "adapter_path": str(plan.adapter_dir)})
    return FinetuneResult(plan.adapter_dir, step, total, last_loss, val_loss, interrupted,
                          plan.data.cut)
