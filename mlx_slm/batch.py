"""Batched generation: several prompts at once, left-padded, each row stopping on its own.

Rows are left-padded to a common length, so every row's last prompt token sits at the same
position and one step feeds all rows. A row padded by `p` sees its tokens at positions
shifted by `p`; RoPE makes attention depend only on relative positions, so with the padding
keys masked out each row attends exactly as it would alone.
"""

from collections.abc import Iterator

import mlx.core as mx

from mlx_slm.cache import make_cache
from mlx_slm.generation import PREFILL_STEP
from mlx_slm.sample import LogitsProcessor, Sampler, greedy


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[mx.array, mx.array]:
    """Token ids [B, L] with each prompt right-aligned, and each row's padding length [B]."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt must hold at least one token")
    length = max(len(p) for p in prompts)
    pads = [length - len(p) for p in prompts]
    rows = [[pad_id] * pad + list(p) for pad, p in zip(pads, prompts)]
    return mx.array(rows, dtype=mx.uint32), mx.array(pads, dtype=mx.int32)


def attention_mask(pads: mx.array, offset: int, length: int) -> mx.array:
    """[B, 1, length, offset + length] boolean: causal, padding keys hidden.

    A padding query also sees itself, so no softmax row is empty (that would give NaN
    values that later layers read back through their padding keys).
    """
    keys = mx.arange(offset + length)
    queries = mx.arange(offset, offset + length)
    causal = keys[None, :] <= queries[:, None]
    real = keys[None, :] >= pads[:, None]
    mask = (causal[None] & real[:, None, :]) | (keys[None, :] == queries[:, None])[None]
    return mask[:, None]


def generate_batch(
    model,
    prompts: list[list[int]],
    *,
    sampler: Sampler = greedy,
    logits_processors: list[LogitsProcessor] = (),
    max_tokens: int = 256,
    stop_ids: tuple[int, ...] = (),
    pad_id: int = 0,
    prefill_step: int = PREFILL_STEP,
    constraints: list | None = None,
) -> Iterator[list[int | None]]:
    """Yield, per step, each row's next token id, or None once the row has stopped.

    A row stops at a stop id (not yielded); generation ends when every row has stopped or
    after `max_tokens` steps. Logits processors see each row's own history. Decoding is
    pipelined as in `generation.generate_tokens`. `constraints` (one
    mlx_slm.constrain.Constraint per row) mask each row's logits; a row whose output is
    complete stops.
    """
    tokens, pads = left_pad(prompts, pad_id)
    batch, length = tokens.shape
    padded = any(len(p) < length for p in prompts)
    cache = make_cache(model)
    histories = [mx.array(p, dtype=mx.uint32) for p in prompts]

    def choose(logits: mx.array) -> mx.array:
        if logits_processors:
            rows = []
            for i in range(batch):
                row = logits[i : i + 1]
                for process in logits_processors:
                    row = process(histories[i], row)
                rows.append(row)
            logits = mx.concatenate(rows)
        token = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        if logits_processors:
            for i in range(batch):
                histories[i] = mx.concatenate([histories[i], token[i : i + 1].astype(mx.uint32)])
        return token

    def mask(offset: int, n: int):
        return attention_mask(pads, offset, n) if padded else None

    offset = 0
    while length - offset > prefill_step:
        model.hidden(tokens[:, offset : offset + prefill_step], cache,
                     mask(offset, prefill_step))
        mx.eval([c.state for c in cache])
        offset += prefill_step
    hidden = model.hidden(tokens[:, offset:], cache, mask(offset, length - offset))
    if constraints is not None:
        def forward(token: mx.array, n: int) -> mx.array:
            return model(token[:, None], cache, mask(length + n, 1))[:, -1, :]

        yield from _constrained(forward, model.logits(hidden[:, -1, :]), choose, constraints,
                                max_tokens, stop_ids)
        return
    token = choose(model.logits(hidden[:, -1, :]))
    mx.async_eval(token)
    stopped = [False] * batch
    for n in range(max_tokens):
        next_token = None
        if n + 1 < max_tokens:
            position = length + n
            logits = model(token[:, None], cache, mask(position, 1))[:, -1, :]
            next_token = choose(logits)
            mx.async_eval(next_token)
        step = []
        for i, value in enumerate(token.tolist()):
            stopped[i] = stopped[i] or value in stop_ids
            step.append(None if stopped[i] else value)
        if all(stopped):
            return
        yield step
        token = next_token


def _constrained(forward, logits, choose, constraints, max_tokens, stop_ids):
    """The batched decode loop with one grammar mask per row, computed on the host while
    the forward runs (as in `generate._constrained`)."""
    mx.async_eval(logits)
    width = logits.shape[-1]
    stopped = [False] * len(constraints)
    for n in range(max_tokens):
        # A stopped row's token is never read; any allowed set keeps its softmax finite.
        masks = mx.concatenate([mx.ones((1, width), mx.bool_) if done else c.mask(width)
                                for c, done in zip(constraints, stopped)])
        token = choose(mx.where(masks, logits, -mx.inf))
        mx.async_eval(token)
        if n + 1 < max_tokens:
            logits = forward(token, n)
            mx.async_eval(logits)
        step = []
        for i, value in enumerate(token.tolist()):
            stopped[i] = stopped[i] or value in stop_ids
            if stopped[i]:
                step.append(None)
                continue
            constraints[i].accept(value)
            step.append(value)
            stopped[i] = constraints[i].is_done()
        if all(v is None for v in step):
            return
        yield step
