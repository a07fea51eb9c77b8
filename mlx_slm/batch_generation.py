"""Many sequences decoding together: rows join (prefilled, alone or together) and leave
between steps, each choosing its own tokens and deciding its own end in the same step.

The one batcher: the quiz and the server both run on it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx

from mlx_slm.batch_cache import BatchCache, prefill_rows
from mlx_slm.cache import KVCache, make_cache
from mlx_slm.chooser import TokenChooser
from mlx_slm.generation import prefill
from mlx_slm.tokenizer import TextStream

CHUNK = 256  # the most prompt ids read between two decode steps
# A chunk read between two decode steps takes at most about this many steps' time, so a
# running row's longest gap stays near (1 + CHUNK_STEPS) of its usual one.
CHUNK_STEPS = 2
# Fewer ids read the weights as often for less work (on the CPU backend, products of up
# to 16 rows also leave BLAS for the one-row kernels).
MIN_CHUNK = 32


@dataclass(eq=False)
class Row:
    """One sequence: its prompt, how it chooses, and when it ends.

    It ends at a stop id (not counted), a stop string in `stream` (the token that completes
    it is counted), a complete grammar, or `max_tokens`: `finish_reason` then says which,
    in OpenAI's words ("stop", "length").
    """

    prompt: list[int]
    chooser: TokenChooser
    max_tokens: int
    stop_ids: tuple[int, ...] = ()
    stream: TextStream | None = None
    want_logprobs: bool = False  # keep each choice's log-probs in `logprobs`
    tokens: list[int] = field(default_factory=list)
    chosen: int | None = None  # the token just chosen, before `advance` takes it
    finish_reason: str | None = None
    piece: str = ""  # the text the last token released
    logprobs: mx.array | None = None  # [1, vocab], of the last choice (with want_logprobs)
    cached: int = 0  # prompt tokens whose keys came from a prefix cache

    @property
    def ids(self) -> list[int]:
        """The prompt and every token chosen so far."""
        return self.prompt + self.tokens

    def advance(self, value: int) -> bool:
        """Take the chosen token; False once the row has ended."""
        self.piece = ""
        if value in self.stop_ids:
            self.finish_reason = "stop"
            return False
        self.tokens.append(value)
        if self.stream is not None:
            self.piece = self.stream.add(value)
            if self.stream.stopped:
                self.finish_reason = "stop"
                return False
        if self.chooser.accept(value):
            self.finish_reason = "stop"
            return False
        if len(self.tokens) >= self.max_tokens:
            self.finish_reason = "length"
            return False
        return True

    def end(self, reason: str) -> None:
        """End the row from outside (a cancelled request); its held-back text is dropped."""
        self.finish_reason = reason


@dataclass(eq=False)
class _Step:
    """A decode step in flight: its rows (in slot order when it was queued), the tokens
    chosen for them [B] (lazy) and, for rows that want them, the log-probs."""

    rows: list[Row]
    tokens: mx.array
    logprobs: list[mx.array | None]


@dataclass(eq=False)
class _Reading:
    """A row whose long prompt is read a chunk per step: its own cache, and how far."""

    row: Row
    cache: list[KVCache]
    fed: int


class BatchGenerator:
    """The rows of one model: running (in the batch) and reading (a long prompt, a chunk per
    step, so that the running rows keep their pace). `on_leave(row, cache)` (optional) sees
    each row's keys and values as it leaves (the server keeps them in its prefix cache)."""

    def __init__(self, model, on_leave: Callable[[Row, BatchCache], None] | None = None,
                 chunk: int = CHUNK):
        self.model = model
        self.cache = BatchCache(model)
        self.on_leave = on_leave
        self.chunk = chunk
        self.reading: list[_Reading] = []
        self._queued: _Step | None = None  # the next decode step, already on its way
        # Timed as they happen, to size the chunks: a decode step (from one token read to
        # the next, with no chunk between), and prompt ids read per second.
        self._step_s: float | None = None
        self._read_tps: float | None = None
        self._last_read: float | None = None  # when the last step's tokens were read

    @property
    def rows(self) -> list[Row]:
        """The running rows, in slot order."""
        return self.cache.rows

    def __len__(self) -> int:
        """Rows running or reading their prompt."""
        return len(self.cache) + len(self.reading)

    def join(self, rows: list[Row], prefixes: list[list[KVCache] | None] | None = None
             ) -> list[Row]:
        """Prefill `rows` and choose their first tokens; rows that go on join the batch.
        A row with a prefix cache (its `cached` first prompt ids) prefills the rest alone;
        the others prefill together. A prompt with more than `chunk` ids left to read is
        read by `step` instead, a chunk at a time, and starts once read. Returns the rows."""
        prefixes = prefixes or [None] * len(rows)
        now = []
        for row, prefix in zip(rows, prefixes):
            if len(row.prompt) - row.cached > self.chunk:
                self.reading.append(_Reading(row, prefix or make_cache(self.model), row.cached))
            else:
                now.append((row, prefix))
        if not now:
            return rows
        fresh = [i for i, (_, prefix) in enumerate(now) if prefix is None]
        caches: list[tuple[list[KVCache], int]] = [None] * len(now)
        logits: list[mx.array | None] = [None] * len(now)
        if len(fresh) == 1:  # one prompt alone: no padding to compute
            now[fresh[0]], fresh = (now[fresh[0]][0], make_cache(self.model)), []
        for i, (row, prefix) in enumerate(now):
            if prefix is not None:
                ids = mx.array(row.prompt[row.cached :], dtype=mx.uint32)
                caches[i], logits[i] = (prefix, 0), prefill(self.model, ids, prefix)
        if fresh:
            shared, last = prefill_rows(self.model, [now[i][0].prompt for i in fresh])
            for j, i in enumerate(fresh):
                caches[i], logits[i] = (shared, j), last[j : j + 1]
        self._start([row for row, _ in now], mx.concatenate(logits), caches)
        return rows

    def step(self) -> list[Row]:
        """One decode step of every running row, then one chunk of the first prompt being
        read; returns the rows that moved (each with its new token, or its end), the rows
        that ended having left.

        Decoding is pipelined as in `generate_tokens`: the next step is queued on this
        step's lazily chosen tokens before they are read back, so the host's work overlaps
        the forward. A row that ends meanwhile has its queued token ignored; rows that
        join meanwhile take their first step with the one after. A grammar needs each token
        on the host before the next mask, so a batch with one steps without queuing.
        """
        moved = []
        if self.cache.rows:
            current, self._queued = self._queued or self._queue(), None
            if not any(r.chooser.constraint is not None for r in self.cache.rows):
                self._queued = self._queue(current)
            running = set(self.cache.rows)
            values = current.tokens.tolist()
            now = time.perf_counter()
            if self._last_read is not None:
                self._step_s = _average(self._step_s, now - self._last_read)
            self._last_read = now
            for row, value, logprobs in zip(current.rows, values, current.logprobs):
                if row not in running:  # it left (a cancelled request) after being queued
                    continue
                row.chosen, row.logprobs = value, logprobs
                moved.append(row)
                if not row.advance(value):
                    self.leave(row)
        return moved + self._read_chunk()

    def _queue(self, previous: "_Step | None" = None) -> "_Step":
        """Queue one decode step of every running row, each fed its last token: the one
        `previous` (a step in flight) chose for it, if any, else the one on the host."""
        rows = list(self.cache.rows)
        if previous is not None and previous.rows == rows:
            feed = previous.tokens
        else:
            index = {id(r): i for i, r in enumerate(previous.rows)} if previous else {}
            feed = mx.concatenate([
                previous.tokens[index[id(r)] : index[id(r)] + 1] if id(r) in index
                else mx.array(r.tokens[-1:], dtype=mx.uint32) for r in rows])
        logits = self.cache(feed.astype(mx.uint32))
        if all(r.chooser.plain and not r.want_logprobs for r in rows):
            tokens, logprobs = mx.argmax(logits, axis=-1), [None] * len(rows)
        else:
            picks = [r.chooser.choose(logits[i : i + 1]) for i, r in enumerate(rows)]
            tokens = mx.concatenate([token for token, _ in picks])
            logprobs = [lp if r.want_logprobs else None for r, (_, lp) in zip(rows, picks)]
        mx.async_eval(tokens)
        return _Step(rows, tokens, logprobs)

    def leave(self, row: Row) -> None:
        """Take `row` out (ended, or cancelled by its caller)."""
        reading = [r for r in self.reading if r.row is row]
        if reading:
            self.reading.remove(reading[0])
            return
        if self.on_leave is not None:
            self.on_leave(row, self.cache)
        self.cache.leave(row)
        if not self.cache.rows:
            self._queued = None  # a step queued for rows that are all gone

    def _read_chunk(self) -> list[Row]:
        """Feed the next chunk of the first long prompt; start its row once all is read."""
        if not self.reading:
            return []
        reading = self.reading[0]
        prompt = reading.row.prompt
        ids = mx.array(prompt[reading.fed : reading.fed + self._chunk_size()], dtype=mx.uint32)
        reading.fed += ids.size
        start = time.perf_counter()
        if reading.fed < len(prompt):
            self.model.hidden(ids[None], reading.cache)
            mx.eval([c.state for c in reading.cache])
            started = []
        else:
            self.reading.pop(0)
            logits = prefill(self.model, ids, reading.cache)
            self._start([reading.row], logits, [(reading.cache, 0)])
            started = [reading.row]
        seconds = time.perf_counter() - start
        self._read_tps = _average(self._read_tps, ids.size / seconds)
        self._last_read = None  # the next gap holds this chunk: no decode step's time
        return started

    def _chunk_size(self) -> int:
        """Prompt ids to read now: all that is left when no row is running (nobody waits);
        else as many as the last reads say fit in CHUNK_STEPS decode steps, from
        min(MIN_CHUNK, chunk) up to `chunk`."""
        if not self.cache.rows:
            return len(self.reading[0].row.prompt)
        floor = min(MIN_CHUNK, self.chunk)
        if self._step_s is None or self._read_tps is None:
            return floor  # not timed yet: a small first chunk times the reading
        fit = int(CHUNK_STEPS * self._step_s * self._read_tps)
        return max(floor, min(self.chunk, fit))

    def _start(self, rows: list[Row], logits: mx.array,
               caches: list[tuple[list[KVCache], int]]) -> None:
        """Choose each prefilled row's first token; those that go on join the batch."""
        self._choose(rows, logits)
        for row, (cache, index) in zip(rows, caches):
            if row.advance(row.chosen):
                self.cache.join(row, cache, index, len(row.prompt))

    def _choose(self, rows: list[Row], logits: mx.array) -> None:
        """Each row's next token into `row.chosen` (and its log-probs if wanted)."""
        if all(r.chooser.plain and not r.want_logprobs for r in rows):
            chosen = mx.argmax(logits, axis=-1)  # one op for an all-greedy batch
            mx.eval(chosen)
            for row, value in zip(rows, chosen.tolist()):
                row.chosen = value
            return
        picks = [r.chooser.choose(logits[i : i + 1]) for i, r in enumerate(rows)]
        mx.eval(picks)
        for row, (token, logprobs) in zip(rows, picks):
            row.chosen = token.item()
            row.logprobs = logprobs if row.want_logprobs else None


def _average(old: float | None, new: float, weight: float = 0.3) -> float:
    """A running average that follows changes (a new row, a longer context) within a few
    samples."""
    return new if old is None else (1 - weight) * old + weight * new
