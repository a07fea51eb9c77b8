"""The one KV layout for decoding many sequences together (continuous batching).

Each layer keeps one buffer [slots, kv_heads, capacity, head_dim]; row r's keys sit in slot r
at columns 0 .. length_r - 1, exactly where they would be alone, so RoPE rotates each row at
its own position and no row is ever shifted. A step writes each row's new key at its own
column and attends over the whole capacity with the columns past each row masked out: the
shapes change only when the buffers grow, so one compiled trace serves many steps.

A joining row is copied into the next free slot; a leaving row's slot is filled by the last
row. Both cost that one row, never the others.
"""

import mlx.core as mx

from mlx_slm.cache import KVCache
from mlx_slm.cpu.ops import BLAS_MIN_ROWS

STEP = 256  # capacity grows in steps of positions, as KVCache's does


class _SlotsView:
    """One layer's buffers inside a step: writes each row's new key at its own position."""

    def __init__(self, keys: mx.array, values: mx.array, positions: mx.array):
        self.keys, self.values, self.offset = keys, values, positions  # RoPE reads `offset`

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        rows = keys.shape[0]
        self.keys = _write_columns(self.keys, keys, self.offset)
        self.values = _write_columns(self.values, values, self.offset)
        return self.keys[:rows], self.values[:rows]


def _write_columns(buffer: mx.array, new: mx.array, positions: mx.array) -> mx.array:
    """`buffer` [S, kv, cap, hd] with `new` [B, kv, 1, hd] written at column positions[b] of
    slot b: a scatter into the flattened buffer (MLX has no mixed slice/array assignment)."""
    slots, heads, capacity, dim = buffer.shape
    rows = new.shape[0]
    index = (mx.arange(rows)[:, None] * heads + mx.arange(heads)[None, :]) * capacity
    flat = buffer.reshape(-1, dim)
    flat[(index + positions[:, None]).reshape(-1)] = new.reshape(-1, dim)
    return flat.reshape(slots, heads, capacity, dim)


class BatchCache:
    """The running rows of one model: their KV slots and the compiled step over them.

    `rows` holds the caller's object for each row, in slot order; `join` and `leave` keep it
    in step with the slots.
    """

    def __init__(self, model):
        self.model = model
        self.rows: list = []
        self.lengths: list[int] = []  # each row's cached positions
        self.keys: list[mx.array] = []  # per layer [slots, kv, capacity, hd]
        self.values: list[mx.array] = []
        self._step = mx.compile(self._forward)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys + self.values)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def join(self, row, cache: list[KVCache], index: int = 0, length: int | None = None) -> None:
        """Add `row`, whose keys and values are the first `length` positions (default: all)
        of row `index` of `cache` (a prefill's)."""
        length = cache[0].offset if length is None else length
        self._reserve(len(self.rows) + 1, length + 1, like=cache)
        slot = len(self.rows)
        for i, layer in enumerate(cache):
            self.keys[i][slot : slot + 1, :, :length, :] = layer.keys[index : index + 1, :, :length]
            self.values[i][slot : slot + 1, :, :length, :] = (
                layer.values[index : index + 1, :, :length])
        self.rows.append(row)
        self.lengths.append(length)
        mx.eval(self.keys, self.values)

    def leave(self, row) -> None:
        """Drop `row`; the last row moves into its slot."""
        slot, last = self.rows.index(row), len(self.rows) - 1
        if slot != last:
            length = self.lengths[last]
            for buffers in (self.keys, self.values):
                # The last row's columns are copied out first: a slot written from a slice of
                # its own buffer would make MLX copy the whole buffer (`* 1` makes the copy).
                moved = [b[last : last + 1, :, :length, :] * 1 for b in buffers]
                mx.eval(moved)
                for buffer, part in zip(buffers, moved):
                    buffer[slot : slot + 1, :, :length, :] = part
            self.rows[slot], self.lengths[slot] = self.rows[last], self.lengths[last]
        self.rows.pop()
        self.lengths.pop()
        if not self.rows:  # an idle model holds no KV memory
            self.keys, self.values = [], []
        else:
            mx.eval(self.keys, self.values)

    def row_cache(self, row, length: int | None = None) -> list[KVCache]:
        """A copy of `row`'s first `length` positions (default: all it holds) as a batch-1
        cache (for the prefix cache)."""
        slot = self.rows.index(row)
        length = self.lengths[slot] if length is None else min(length, self.lengths[slot])
        caches = []
        for keys, values in zip(self.keys, self.values):
            cache = KVCache()
            cache.keys = mx.array(keys[slot : slot + 1, :, :length, :])
            cache.values = mx.array(values[slot : slot + 1, :, :length, :])
            cache.offset = length
            caches.append(cache)
        mx.eval([c.state for c in caches])
        return caches

    def __call__(self, tokens: mx.array) -> mx.array:
        """Logits [B, vocab] for each row's next token `tokens` [B]; appends their keys."""
        self._reserve(len(self.rows), max(self.lengths) + 1)
        positions = mx.array(self.lengths, dtype=mx.int32)
        # From BLAS_MIN_ROWS rows the CPU layers' half-precision products evaluate as they
        # go (to bound the float32 copy of the weights), which a compiled trace cannot.
        step = self._step if len(self.rows) < BLAS_MIN_ROWS else self._forward
        logits, *buffers = step(tokens, positions, *self.keys, *self.values)
        layers = len(self.keys)
        self.keys, self.values = buffers[:layers], buffers[layers:]
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def _forward(self, tokens: mx.array, positions: mx.array, *buffers: mx.array):
        layers = len(buffers) // 2
        views = [_SlotsView(k, v, positions) for k, v in zip(buffers[:layers], buffers[layers:])]
        # Each row sees its own columns up to and including the one it writes now.
        mask = (mx.arange(buffers[0].shape[2])[None] <= positions[:, None])[:, None, None, :]
        logits = self.model(tokens[:, None], views, mask)[:, -1, :]
        return (logits, *[v.keys for v in views], *[v.values for v in views])

    def _reserve(self, slots: int, columns: int, like: list[KVCache] | None = None) -> None:
        """Grow the buffers to hold `slots` rows of `columns` positions (amortized: slots
        double, columns grow in steps); an empty batch takes its shapes and dtype from the
        joining cache `like`."""
        have_slots = self.keys[0].shape[0] if self.keys else 0
        have_columns = self.capacity
        if slots <= have_slots and columns <= have_columns:
            return
        new_slots = max(slots, 2 * have_slots)
        new_columns = (max(columns, have_columns) + STEP - 1) // STEP * STEP
        templates = self.keys + self.values if self.keys else (
            [c.keys for c in like] + [c.values for c in like])
        grown = []
        for old in templates:
            buffer = mx.zeros((new_slots, old.shape[1], new_columns, old.shape[3]), old.dtype)
            if self.keys:
                buffer[:have_slots, :, :have_columns, :] = old
            grown.append(buffer)
        layers = len(grown) // 2
        self.keys, self.values = grown[:layers], grown[layers:]


def prefill_rows(model, prompts: list[list[int]],
                 step: int = 512) -> tuple[list[KVCache], mx.array]:
    """Prefill several prompts in one pass: a cache whose row i holds prompt i's keys and
    values (at columns 0 .. len - 1), and each prompt's last-position logits [B, vocab].

    Prompts are right-padded, so every token keeps the position it has alone and the causal
    mask already hides the padding from real tokens; `BatchCache.join` takes each row's
    own columns only.
    """
    from mlx_slm.cache import make_cache

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
    return cache, model.logits(mx.stack(picked))
