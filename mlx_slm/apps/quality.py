"""Scoring a model on a text: perplexity, and what a quantization costs against its base.

Every metric comes from logits in float32: perplexity is exp(mean negative log-likelihood of
each next token); KL(base || quant) compares the two next-token distributions and is averaged
over positions; top-1 agreement is the share of positions where both models' likeliest next
token is the same. The text is scored in windows of at most the model's context, each
starting with BOS (a valid document start), so every token of the text is predicted once.
"""

import math
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import mlx.core as mx

from mlx_slm.cache import make_cache
from mlx_slm.errors import SlmError

SAMPLE_TEXT = "data/sample_text.txt"
SAMPLE_LABEL = "built-in sample"
SCORE_CHUNK = 256  # positions per forward pass: bounds the [chunk, vocab] float32 logits


def sample_text() -> str:
    """The built-in English sample (original prose on geography, science and history)."""
    return resources.files("mlx_slm").joinpath(SAMPLE_TEXT).read_text(encoding="utf-8")


def read_text(path: str | Path | None) -> tuple[str, str]:
    """The text to score and its label: the file at `path`, stdin for "-", or the built-in
    sample."""
    if path is None:
        return sample_text(), SAMPLE_LABEL
    if str(path) == "-":
        text, label, what = _stdin_text(), "text from stdin", "The text on stdin"
    else:
        from mlx_slm.store.files import read_utf8

        text, label = read_utf8(path, "--text takes a UTF-8 text file"), str(path)
        what = f"Text file {path}"
    if not text.strip():
        raise SlmError(f"{what} is empty; give some text to score.")
    return text, label


def _stdin_text() -> str:
    import sys

    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SlmError(f"The text on stdin is not UTF-8 (at byte {err.start}); give UTF-8 "
                       "text.") from None


def log_probs(logits: mx.array) -> mx.array:
    """Log-softmax over the last axis, in float32."""
    logits = logits.astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def position_metrics(base_logits: mx.array, targets: mx.array,
                     quant_logits: mx.array | None = None) -> dict[str, mx.array]:
    """Per position [N]: nll of each target; with a second model, its nll, KL and top-1 match."""
    base = log_probs(base_logits)
    metrics = {"nll_base": -mx.take_along_axis(base, targets[:, None], axis=-1)[:, 0]}
    if quant_logits is not None:
        quant = log_probs(quant_logits)
        metrics["nll_quant"] = -mx.take_along_axis(quant, targets[:, None], axis=-1)[:, 0]
        metrics["kl"] = mx.sum(mx.exp(base) * (base - quant), axis=-1)
        metrics["top1_agree"] = (mx.argmax(base, -1) == mx.argmax(quant, -1)).astype(mx.float32)
    return metrics


def windows(ids: list[int], window: int, bos_id: int) -> Iterator[tuple[list[int], list[int]]]:
    """(inputs, targets) per window: inputs are BOS and the window's tokens but its last."""
    if window < 2:
        raise SlmError(f"The scoring window must hold at least 2 tokens, got {window}.")
    for start in range(0, len(ids), window):
        targets = ids[start : start + window]
        yield [bos_id, *targets[:-1]], targets


def chunked_logits(model, inputs: list[int], chunk: int = SCORE_CHUNK) -> Iterator[mx.array]:
    """Logits [n, vocab] of `inputs`, `chunk` positions at a time through a KV cache."""
    cache = make_cache(model)
    for start in range(0, len(inputs), chunk):
        yield model(mx.array([inputs[start : start + chunk]]), cache)[0]


def score(base, ids: list[int], bos_id: int, quant=None, window: int | None = None,
          chunk: int = SCORE_CHUNK,
          on_progress: Callable[[int], None] | None = None) -> dict:
    """Perplexity of `base` on `ids` (text tokens, no BOS); with `quant`, the comparison too.
    `on_progress(n)` follows each chunk of `n` scored tokens."""
    if not ids:
        raise SlmError("The text has no tokens to score.")
    window = min(window or base.args.max_context_length, base.args.max_context_length)
    sums: dict[str, float] = {}
    for inputs, targets in windows(ids, window, bos_id):
        quant_chunks = chunked_logits(quant, inputs, chunk) if quant is not None else None
        for i, base_logits in enumerate(chunked_logits(base, inputs, chunk)):
            quant_logits = next(quant_chunks) if quant_chunks is not None else None
            chunk_targets = mx.array(targets[i * chunk : (i + 1) * chunk])
            metrics = position_metrics(base_logits, chunk_targets, quant_logits)
            totals = {name: mx.sum(values) for name, values in metrics.items()}
            mx.eval(totals)
            for name, total in totals.items():
                sums[name] = sums.get(name, 0.0) + total.item()
            if on_progress is not None:
                on_progress(chunk_targets.size)
    n = len(ids)
    result = {"tokens": n, "window": window, "perplexity": math.exp(sums["nll_base"] / n)}
    if quant is not None:
        result.update(
            perplexity_quant=math.exp(sums["nll_quant"] / n),
            kl_mean=sums["kl"] / n,
            top1_agreement=sums["top1_agree"] / n,
        )
    return result
