"""A prefix cache: the keys and values of token sequences seen before, reused by later
prompts that start the same way (a chat's earlier turns), bounded in bytes, least recently
used out first."""

from collections import OrderedDict

from mlx_slm.cache import KVCache


class PrefixCache:
    """Token sequences -> their batch-1 KV caches, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], list[KVCache]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.reused_tokens = 0

    def store(self, tokens: list[int], cache: list[KVCache]) -> None:
        """Keep `cache` (which holds exactly `tokens`); evict the oldest beyond the bound."""
        key = tuple(tokens)
        size = sum(c.nbytes for c in cache)
        if not key or size > self.max_bytes or cache[0].offset != len(key):
            return
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        # A stored prefix of the new sequence is now redundant.
        for old in [k for k in self.entries if len(k) < len(key) and key[: len(k)] == k]:
            self._drop(old)
        self.entries[key] = cache
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def lookup(self, tokens: list[int], min_tokens: int = 1
               ) -> tuple[int, list[KVCache] | None]:
        """The longest stored prefix of `tokens`, leaving at least one token to run, as a new
        cache holding that many positions (the stored arrays are shared, never written);
        nothing when it is shorter than `min_tokens`."""
        best, best_key = min_tokens - 1, None
        limit = len(tokens) - 1
        for key in self.entries:
            n = _common_prefix(key, tokens, limit)
            if n > best:
                best, best_key = n, key
        if best_key is None:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        caches = []
        for stored in self.entries[best_key]:
            cache = KVCache()
            # Writes into a KVCache replace its arrays, so the stored ones stay intact.
            cache.keys, cache.values = stored.keys[..., :best, :], stored.values[..., :best, :]
            cache.offset = best
            caches.append(cache)
        return best, caches

    def _drop(self, key: tuple[int, ...]) -> None:
        self.nbytes -= sum(c.nbytes for c in self.entries.pop(key))


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
