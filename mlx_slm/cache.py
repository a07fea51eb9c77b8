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
        if self.keys is None or start + length > self.keys.shape[2]:
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
