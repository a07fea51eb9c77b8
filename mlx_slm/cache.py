"""KV caches: made by the caller, passed to the model, one per layer."""

import mlx.core as mx


class KVCache:
    """Keys and values of one layer, [B, kv_heads, capacity, head_dim], grown in steps.

    Growing in steps of `step` positions avoids a reallocation per token; writes go into
    the preallocated buffer in place.
    """

    step = 256

    def __init__(self):
        self.keys = None
        self.values = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        start, length = self.offset, keys.shape[2]
        if self.keys is None or start + length > self.capacity:
            self._grow(keys, values, start + length)
        self.offset = start + length
        self.keys[..., start : self.offset, :] = keys
        self.values[..., start : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> None:
        B, n_kv, _, k_dim = keys.shape
        capacity = (needed + self.step - 1) // self.step * self.step
        new_k = mx.zeros((B, n_kv, capacity, k_dim), keys.dtype)
        new_v = mx.zeros((B, n_kv, capacity, values.shape[3]), values.dtype)
        if self.keys is not None:
            new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
            new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
        self.keys, self.values = new_k, new_v

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def reserve(self, needed: int) -> None:
        """Make room for `needed` positions (the buffers must exist: prefill first)."""
        if needed > self.capacity:
            self._grow(self.keys, self.values, needed)

    def trim(self, n: int) -> int:
        """Forget the last `n` positions (e.g. to re-run a token); returns how many went."""
        n = min(self.offset, n)
        self.offset -= n
        return n

    @property
    def state(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


def make_cache(model) -> list[KVCache]:
    """One empty cache per transformer layer of `model`."""
    return [KVCache() for _ in model.layers]


def cache_offset(cache: list[KVCache]) -> int:
    return cache[0].offset if cache else 0


class BufferView:
    """One layer's cache buffers inside a compiled decode step, written at position `pos`.

    Attention runs over the whole buffer; the step's mask hides positions after `pos`, so
    the step's shapes depend only on the capacity and one trace serves many tokens.
    """

    def __init__(self, keys: mx.array, values: mx.array, pos: mx.array):
        self.keys, self.values, self.offset = keys, values, pos

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        self.keys = mx.slice_update(self.keys, keys, self.offset, axes=(2,))
        self.values = mx.slice_update(self.values, values, self.offset, axes=(2,))
        return self.keys, self.values
