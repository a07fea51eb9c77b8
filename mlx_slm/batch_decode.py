"""Continuous batching: sequences of different lengths decode together, joining and leaving
between steps.

Each sequence is prefilled alone into its own KVCache (exactly as `generate` does), then
joins a running batch. The batch keeps, per layer, one buffer [B, kv_heads, capacity, hd]
in which every row is right-aligned: its keys end at the shared column `end`, padding sits
on the left and is masked out. A step writes every row's new key at column `end`. RoPE
rotates each row at its own true position (a per-row offset), so a row's keys and queries
are exactly those it would have alone; where a key sits in the buffer does not matter to
attention once the padding is masked.
"""

import mlx.core as mx

from mlx_slm.cache import KVCache, make_cache
from mlx_slm.generation import PREFILL_STEP


class _RowsView:
    """One layer's view of the batch for a model call: per-row offsets, a shared write column."""

    def __init__(self, batch: "DecodeBatch", layer: int):
        self.batch, self.layer = batch, layer
        self.offset = batch.offsets  # per-row true positions: RoPE reads them

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        b, i, end = self.batch, self.layer, self.batch.end
        b.keys[i][..., end : end + 1, :] = keys
        b.values[i][..., end : end + 1, :] = values
        return b.keys[i][..., : end + 1, :], b.values[i][..., : end + 1, :]


class DecodeBatch:
    """The running batch of one model: rows join with a prefilled cache and leave at will."""

    step = 256  # capacity grows in steps, as KVCache does

    def __init__(self, model):
        self.model = model
        self.keys: list[mx.array] = []
        self.values: list[mx.array] = []
        self.lengths: list[int] = []  # each row's cached positions
        self.end = 0  # the column after every row's last key

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> mx.array:
        return mx.array(self.lengths, dtype=mx.int32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys + self.values)

    def add(self, cache: list[KVCache]) -> None:
        """Append a row from a batch-1 cache (its keys at columns 0 .. offset-1)."""
        length = cache[0].offset
        if not self.lengths:
            self.end = length
        shift = max(0, length - self.end)  # a longer joiner pads every other row on the left
        self.end += shift
        width = self._capacity(self.end + 1)
        for i, layer in enumerate(cache):
            new_k = _right_aligned(layer.keys[..., :length, :], self.end, width)
            new_v = _right_aligned(layer.values[..., :length, :], self.end, width)
            if self.lengths:
                new_k = mx.concatenate([_shifted(self.keys[i], shift, width), new_k])
                new_v = mx.concatenate([_shifted(self.values[i], shift, width), new_v])
                self.keys[i], self.values[i] = new_k, new_v
            else:
                self.keys.append(new_k)
                self.values.append(new_v)
        self.lengths.append(length)
        mx.eval(self.keys, self.values)

    def remove(self, rows: list[int]) -> None:
        """Drop `rows` (indices), and the left columns that only padding used."""
        keep = [r for r in range(len(self.lengths)) if r not in set(rows)]
        self.lengths = [self.lengths[r] for r in keep]
        if not keep:
            self.keys, self.values, self.end = [], [], 0
            return
        trim = self.end - max(self.lengths)
        self.end -= trim
        index = mx.array(keep, dtype=mx.int32)
        width = self._capacity(self.end + 1)
        self.keys = [_fit(k[index][..., trim:, :], width) for k in self.keys]
        self.values = [_fit(v[index][..., trim:, :], width) for v in self.values]
        mx.eval(self.keys, self.values)

    def row_cache(self, row: int) -> list[KVCache]:
        """A copy of one row's keys and values as a batch-1 cache (for the prefix cache)."""
        start = self.end - self.lengths[row]
        caches = []
        for k, v in zip(self.keys, self.values):
            cache = KVCache()
            cache.keys = mx.contiguous(k[row : row + 1, :, start : self.end, :])
            cache.values = mx.contiguous(v[row : row + 1, :, start : self.end, :])
            cache.offset = self.lengths[row]
            caches.append(cache)
        mx.eval([c.state for c in caches])
        return caches

    def __call__(self, tokens: mx.array) -> mx.array:
        """Logits [B, vocab] for each row's next token `tokens` [B]; appends their keys."""
        if self.end + 1 > self.keys[0].shape[2]:
            width = self._capacity(self.end + 1)
            self.keys = [_fit(k, width) for k in self.keys]
            self.values = [_fit(v, width) for v in self.values]
        pads = self.end - self.offsets
        mask = (mx.arange(self.end + 1)[None] >= pads[:, None])[:, None, None, :]
        views = [_RowsView(self, i) for i in range(len(self.keys))]
        logits = self.model(tokens[:, None], views, mask)[:, -1, :]
        self.end += 1
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def _capacity(self, needed: int) -> int:
        return (needed + self.step - 1) // self.step * self.step


def prefill_rows(model, prompts: list[list[int]],
                 step: int = PREFILL_STEP) -> tuple[list[list[KVCache]], mx.array]:
    """Prefill several prompts in one pass: a batch-1 cache per prompt, and the logits of
    each prompt's last position [B, vocab].

    Prompts are right-padded, so every token keeps the position it has alone and the causal
    mask already hides the padding from real tokens; padding keys are dropped afterwards.
    """
    length = max(len(p) for p in prompts)
    tokens = mx.array([p + [0] * (length - len(p)) for p in prompts], dtype=mx.uint32)
    cache = make_cache(model)
    lasts = [len(p) - 1 for p in prompts]
    picked: list[mx.array | None] = [None] * len(prompts)
    for start in range(0, length, step):
        end = min(start + step, length)
        hidden = model.hidden(tokens[:, start:end], cache)
        for i, last in enumerate(lasts):
            if start <= last < end:
                picked[i] = hidden[i, last - start]
        mx.eval([c.state for c in cache], [h for h in picked if h is not None])
    rows = []
    for i, prompt in enumerate(prompts):
        row = []
        for layer in cache:
            one = KVCache()
            one.keys = mx.contiguous(layer.keys[i : i + 1, :, : len(prompt), :])
            one.values = mx.contiguous(layer.values[i : i + 1, :, : len(prompt), :])
            one.offset = len(prompt)
            row.append(one)
        rows.append(row)
    mx.eval([c.state for row in rows for c in row])
    return rows, model.logits(mx.stack(picked))


def _right_aligned(row: mx.array, end: int, width: int) -> mx.array:
    """[1, kv, n, hd] placed so that it ends at column `end` of a zero buffer `width` wide."""
    out = mx.zeros((*row.shape[:2], width, row.shape[3]), row.dtype)
    out[..., end - row.shape[2] : end, :] = row
    return out


def _shifted(buffer: mx.array, shift: int, width: int) -> mx.array:
    """`buffer`'s columns moved right by `shift`, in a buffer `width` wide."""
    if shift == 0:
        return _fit(buffer, width)
    pad = mx.zeros((*buffer.shape[:2], shift, buffer.shape[3]), buffer.dtype)
    return _fit(mx.concatenate([pad, buffer], axis=2), width)


def _fit(buffer: mx.array, width: int) -> mx.array:
    """`buffer` cut or zero-extended to `width` columns."""
    have = buffer.shape[2]
    if have >= width:
        return buffer[..., :width, :]
    pad = mx.zeros((*buffer.shape[:2], width - have, buffer.shape[3]), buffer.dtype)
    return mx.concatenate([buffer, pad], axis=2)
