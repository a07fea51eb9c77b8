"""Training pieces: batches with a loss mask, the masked loss, one optimizer step (with
gradient accumulation), the learning-rate schedule, and gradient checkpointing.

The step is compiled with the model's, the optimizer's and the random state as implicit
inputs and outputs, so dropout draws from mx.random and a run seeded the same way repeats.
"""

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_map_with_path

from mlx_slm.model import TransformerBlock

PAD_MULTIPLE = 32  # batch lengths round up to this, so the compiled step sees few shapes


@dataclass(frozen=True)
class Example:
    """One tokenized example: `ids` with BOS, and per token whether it carries loss (a token
    is predicted from the ones before it, so `loss_mask[0]`, BOS, is always False)."""

    ids: list[int]
    loss_mask: list[bool]


@dataclass(frozen=True)
class Batch:
    """inputs [B, L], targets [B, L] (the inputs shifted by one), mask [B, L] (1 where the
    target carries loss)."""

    inputs: mx.array
    targets: mx.array
    mask: mx.array


def make_batch(examples: list[Example], max_length: int) -> Batch:
    """Pad `examples` (each at most max_length + 1 tokens) to one rectangle."""
    longest = max(len(e.ids) for e in examples) - 1
    length = min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, max_length)
    tokens = np.zeros((len(examples), length + 1), dtype=np.int32)
    mask = np.zeros((len(examples), length), dtype=np.float32)
    for row, example in enumerate(examples):
        n = len(example.ids)
        tokens[row, :n] = example.ids
        mask[row, : n - 1] = example.loss_mask[1:]
    return Batch(mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:]), mx.array(mask))


@mx.custom_function
def token_nll(logits: mx.array, targets: mx.array) -> mx.array:
    """Cross-entropy per position, in the logits' dtype (logsumexp accumulates in float32).

    Its gradient, softmax - one-hot, is written out: autograd through logsumexp and the
    gather keeps several [B, L, vocab] arrays alive and cost 1.6x (float32) to 3x (bfloat16,
    upcast) the peak memory of the step on a 32000-word vocabulary.
    """
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return mx.logsumexp(logits, axis=-1) - picked


@token_nll.vjp
def _token_nll_vjp(primals, cotangent, output):
    logits, targets = primals
    probs = mx.softmax(logits, axis=-1, precise=True)
    hit = mx.arange(logits.shape[-1]) == targets[..., None]
    return (probs - hit) * cotangent[..., None].astype(logits.dtype), mx.zeros_like(targets)


def masked_loss(model: nn.Module, inputs: mx.array, targets: mx.array,
                mask: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the positions that carry loss, and their count."""
    losses = token_nll(model(inputs), targets).astype(mx.float32) * mask
    count = mask.sum()
    return losses.sum() / mx.maximum(count, 1), count


def schedule(learning_rate: float, iters: int, warmup: int = 0, min_lr: float = 0.0):
    """Linear warm-up from 0 over `warmup` steps, then cosine decay to `min_lr` at `iters`."""
    decay = optim.cosine_decay(learning_rate, max(iters - warmup, 1), min_lr)
    if warmup <= 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, learning_rate, warmup), decay],
                                [warmup])


class TrainStep:
    """Calls of `step(batch)` accumulate gradients; every `accumulate`-th call updates the
    adapter with their mean. Returns (loss, loss tokens) of the batch, lazily."""

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, accumulate: int = 1):
        self.model, self.optimizer, self.accumulate = model, optimizer, accumulate
        self.pending, self.count = None, 0
        if not optimizer.state:
            # Initialized before compiling: a state created during the trace is not captured.
            optimizer.init(model.trainable_parameters())
        loss_and_grad = nn.value_and_grad(model, masked_loss)
        state = [model.state, optimizer.state, mx.random.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def update(inputs, targets, mask):
            (loss, count), grads = loss_and_grad(model, inputs, targets, mask)
            optimizer.update(model, grads)
            return loss, count

        @partial(mx.compile, inputs=state, outputs=state)
        def gradients(inputs, targets, mask):
            (loss, count), grads = loss_and_grad(model, inputs, targets, mask)
            return loss, count, grads

        self._update, self._gradients = update, gradients

    def __call__(self, batch: Batch) -> tuple[mx.array, mx.array]:
        if self.accumulate == 1:
            return self._update(batch.inputs, batch.targets, batch.mask)
        loss, count, grads = self._gradients(batch.inputs, batch.targets, batch.mask)
        self.pending = grads if self.pending is None else tree_map(mx.add, self.pending, grads)
        self.count += 1
        if self.count == self.accumulate:
            self.optimizer.update(self.model, tree_map(lambda g: g / self.accumulate,
                                                       self.pending))
            self.pending, self.count = None, 0
        return loss, count


def evaluate(model: nn.Module, batches) -> float:
    """Mean loss per loss-carrying token over `batches`."""
    total, count = 0.0, 0.0
    for batch in batches:
        loss, n = masked_loss(model, batch.inputs, batch.targets, batch.mask)
        mx.eval(loss, n)
        total += loss.item() * n.item()
        count += n.item()
    return total / max(count, 1.0)


def optimizer_state(optimizer: optim.Optimizer) -> dict[str, mx.array]:
    """The optimizer's state (step, moments) as flat named arrays, for a checkpoint."""
    return dict(tree_flatten(optimizer.state))


def restore_optimizer_state(optimizer: optim.Optimizer, saved: dict[str, mx.array]) -> None:
    """Put back what `optimizer_state` saved into an optimizer initialized for the same
    parameters."""
    optimizer.state = tree_map_with_path(lambda path, value: saved.get(path, value),
                                         optimizer.state)


class CheckpointedBlock(TransformerBlock):
    """A block that recomputes its activations in the backward pass instead of keeping
    them: less memory for a longer step."""

    def __call__(self, x: mx.array, mask, cache=None) -> mx.array:
        forward = super().__call__

        def inner(params, x):
            self.update(params)
            return forward(x, mask, cache)

        return mx.checkpoint(inner)(self.trainable_parameters(), x)


def checkpoint_gradients(model: nn.Module) -> None:
    """Swap every block for its checkpointed form (same parameters and names)."""
    for block in model.layers:
        block.__class__ = CheckpointedBlock
