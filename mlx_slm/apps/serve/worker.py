"""The MLX worker: one thread owns the models (MLX state is not shared across threads),
prefills each joining request alone and decodes all running requests of a model together
(continuous batching: requests join and leave the batch between steps)."""

import functools
import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

import mlx.core as mx

from mlx_slm.apps.serve.jobs import Job, Row
from mlx_slm.apps.serve.metrics import StepTimes
from mlx_slm.apps.serve.protocol import ApiError
from mlx_slm.batch_decode import DecodeBatch, prefill_rows
from mlx_slm.cache import make_cache
from mlx_slm.generation import prefill
from mlx_slm.prefix_cache import PrefixCache
from mlx_slm.sizes import kv_cache_bytes


@dataclass
class Served:
    """One served model with its running batch and prefix cache."""

    name: str
    loaded: object  # apps.models.LoadedModel
    prefix: PrefixCache
    batch: DecodeBatch = None
    rows: list[Row] = field(default_factory=list)

    def __post_init__(self):
        from mlx_slm.loader import model_dtype
        from mlx_slm.runtime import runtime_report

        self.batch = DecodeBatch(self.loaded.model)
        self.token_bytes = kv_cache_bytes(self.loaded.config, 1, 4)  # float32 keys and values
        # Which kernels produce the figures, reported with every response's timings.
        self.report = {**runtime_report(), "dtype": model_dtype(self.loaded.model)}

    @functools.cached_property
    def vocab(self):
        """The tokenizer as the grammar engine sees it: made at the first response_format."""
        from mlx_slm.constrain import GrammarVocabulary

        return GrammarVocabulary(self.loaded.tokenizer)


@dataclass
class Settings:
    """The worker's limits."""

    max_batch: int = 16
    prefix_cache_bytes: int = 256 * 2**20
    # Running batches' KV caches; None: 80% of the memory available after loading, less the
    # prefix cache's own bound.
    kv_budget_bytes: int | None = None


class Worker:
    """Owns the models on its own thread; `submit` hands it jobs from any thread."""

    def __init__(self, names: list[str], load_options, settings: Settings | None = None):
        self.names, self.load_options = names, load_options
        self.settings = settings or Settings()
        self.kv_budget = self.settings.kv_budget_bytes
        self.served: dict[str, Served] = {}
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.pending: deque[Job] = deque()
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.memory = {"active_bytes": 0, "peak_bytes": 0}
        self.tokens_generated = 0
        self.peak_running = 0  # the most requests decoded together so far
        self.step_times = StepTimes()
        self.thread = threading.Thread(target=self._main, name="mlx-worker", daemon=True)

    def start(self) -> None:
        """Load the models on the worker thread; re-raises a load failure here."""
        self.thread.start()
        self.ready.wait()
        if self.failure is not None:
            self.thread.join()  # its MLX streams are gone before the error ends the process
            raise self.failure

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

    def submit(self, job: Job) -> None:
        if self.stopping.is_set():
            raise ApiError(503, "The server is shutting down.", kind="server_error")
        job.queued_at = time.perf_counter()
        self.inbox.put(job)

    @property
    def queue_depth(self) -> int:
        return self.inbox.qsize() + len(self.pending)

    @property
    def running(self) -> int:
        return sum(len(s.rows) for s in self.served.values())

    @property
    def kv_bytes(self) -> int:
        return sum(s.batch.nbytes for s in self.served.values())

    @property
    def prefix_bytes(self) -> int:
        return sum(s.prefix.nbytes for s in self.served.values())

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as err:  # handed to start(), which re-raises it
            self.failure = err
        self.ready.set()
        try:
            while self.failure is None and not (
                    self.stopping.is_set() and not self.running and not self.queue_depth):
                self._admit()
                for served in self.served.values():
                    if served.rows:
                        self._guarded(served, self._step)
                self.memory = {"active_bytes": mx.get_active_memory(),
                               "peak_bytes": mx.get_peak_memory()}
        finally:
            # This thread's MLX streams must go with it, or the process aborts at exit (MLX
            # 0.32; older versions have no per-thread streams and no clear_streams).
            mx.synchronize()
            if hasattr(mx, "clear_streams"):
                mx.clear_streams()

    def _load(self) -> None:
        from mlx_slm.apps.models import open_model
        from mlx_slm.memory_guard import available_bytes

        for name in self.names:
            loaded = open_model(name, self.load_options)
            self.served[name] = Served(name, loaded, PrefixCache(self.settings.prefix_cache_bytes))
        if self.kv_budget is None:
            available = available_bytes()
            self.kv_budget = (int(0.8 * available) - self.settings.prefix_cache_bytes
                              if available else 2**62)

    def _admit(self) -> None:
        """Move jobs from the inbox to the batch while there is room; wait when idle."""
        idle = not self.running and not self.pending
        try:
            while True:
                self.pending.append(self.inbox.get(timeout=0.05) if idle else
                                    self.inbox.get_nowait())
                idle = False
        except queue.Empty:
            pass
        joining: dict[str, list[Job]] = {}
        while self.pending and self.running + self._count(joining) < self.settings.max_batch:
            job = self.pending[0]
            if job.cancelled.is_set():
                self.pending.popleft()
                job.emit(("end", "cancelled"))
                continue
            if not self._fits(self.served[job.model], job, len(joining.get(job.model, []))):
                if self.running or joining:
                    break  # wait for rows to leave
                self.pending.popleft()
                job.emit(("error", ApiError(
                    507, "This request's KV cache would not fit in the memory available.",
                    code="insufficient_memory", kind="server_error")))
                continue
            joining.setdefault(job.model, []).append(self.pending.popleft())
        start = time.perf_counter()
        for name, jobs in joining.items():
            self._guarded(self.served[name], self._start, *jobs)
        if joining:  # not the idle wait above
            self.step_times.add("admission", start)

    @staticmethod
    def _count(joining: dict[str, list[Job]]) -> int:
        return sum(len(jobs) for jobs in joining.values())

    def _fits(self, served: Served, job: Job, joining: int) -> bool:
        """Whether the padded batch with `job` (and `joining` others) stays within budget."""
        longest = max([served.batch.end + job.max_tokens, len(job.prompt) + job.max_tokens])
        needed = (len(served.rows) + joining + 1) * longest * served.token_bytes
        others = self.kv_bytes - served.batch.nbytes
        return needed + others <= self.kv_budget

    def _start(self, served: Served, *jobs: Job) -> None:
        """Prefill the joining jobs, emit their first tokens and let them join the batch.

        A job whose prompt starts with a cached prefix prefills the rest alone; the others
        prefill together in one pass.
        """
        model = served.loaded.model
        started = time.perf_counter()
        caches, logits, fresh = {}, {}, []
        for job in jobs:
            job.started_at = started
            job.cached_tokens, cache = served.prefix.lookup(job.prompt)
            if cache is None and len(jobs) > 1:
                fresh.append(job)
                continue
            cache = cache or make_cache(model)
            ids = mx.array(job.prompt[job.cached_tokens :], dtype=mx.uint32)
            caches[id(job)], logits[id(job)] = cache, prefill(model, ids, cache)
        if fresh:
            rows, last = prefill_rows(model, [job.prompt for job in fresh])
            for i, job in enumerate(fresh):
                caches[id(job)], logits[id(job)] = rows[i], last[i : i + 1]
        rows = [Row(job, served.vocab if job.params.constraint else None) for job in jobs]
        picks = self._pick(rows, mx.concatenate([logits[id(job)] for job in jobs]))
        for row, (value, info) in zip(rows, picks):
            cache = caches[id(row.job)]
            served.prefix.store(row.job.prompt, cache)
            if self._advance(row, value, info):
                served.batch.add(cache)
                served.rows.append(row)
        self.peak_running = max(self.peak_running, self.running)

    def _step(self, served: Served) -> None:
        """One decode step of every running row; rows that end leave the batch."""
        rows, times = served.rows, self.step_times
        start = time.perf_counter()
        for row in rows:
            row.sequence.append(row.token)
        logits = served.batch(mx.array([r.token for r in rows], dtype=mx.uint32))
        mx.eval(logits)  # apart from sampling, so /metrics can tell the two (one more sync)
        start = times.add("forward", start)
        picks = self._pick(rows, logits)
        start = times.add("sampling", start)
        keep = [self._advance(r, *pick) for r, pick in zip(rows, picks)]
        start = times.add("emit", start)
        times.steps += 1
        gone = [i for i, k in enumerate(keep) if not k]
        if gone:
            for i in gone:
                served.prefix.store(rows[i].sequence, served.batch.row_cache(i))
            served.batch.remove(gone)
            served.rows = [r for r, k in zip(rows, keep) if k]
            times.add("copies", start)

    @staticmethod
    def _pick(rows: list[Row], logits: mx.array) -> list[tuple[int, dict | None]]:
        """Each row's next token id, with its log-probs when the request asked for them."""
        if all(r.plain and not r.job.params.logprobs for r in rows):
            tokens = mx.argmax(logits, axis=-1)  # one op for an all-greedy batch
            mx.eval(tokens)
            return [(t, None) for t in tokens.tolist()]
        picks = [r.choose(logits[i : i + 1]) for i, r in enumerate(rows)]
        tops = []
        for row, (_, logprobs) in zip(rows, picks):
            k = row.job.params.top_logprobs if row.job.params.logprobs else 0
            tops.append(mx.argsort(-logprobs[0])[:k] if k else None)
        mx.eval([t for t, _ in picks], [lp for _, lp in picks], [t for t in tops if t is not None])
        out = []
        for row, (token, logprobs), top in zip(rows, picks, tops):
            value, info = token.item(), None
            if row.job.params.logprobs:
                ids = top.tolist() if top is not None else []
                info = {"logprob": logprobs[0, value].item(),
                        "top": list(zip(ids, logprobs[0][top].tolist())) if ids else []}
            out.append((value, info))
        return out

    def _advance(self, row: Row, value: int, info: dict | None) -> bool:
        """Emit the chosen token (or the end); False when the row is done."""
        job = row.job
        now = time.perf_counter()
        if job.cancelled.is_set():
            job.emit(("end", "cancelled"))
            return False
        if value in job.stop_ids:
            job.emit(("end", "stop"))
            return False
        job.first_at = job.first_at or now
        job.last_at = now
        job.generated += 1
        self.tokens_generated += 1
        row.token = value
        job.emit(("token", value, info))
        if row.constraint is not None:
            row.constraint.accept(value)
            if row.constraint.is_done():  # the structure is complete: nothing may follow
                job.emit(("end", "stop"))
                return False
        if job.generated >= job.max_tokens:
            job.emit(("end", "length"))
            return False
        return True

    def _guarded(self, served: Served, action, *args) -> None:
        """Run `action`; on an internal error fail the affected requests, keep serving."""
        try:
            action(served, *args)
        except Exception as err:  # noqa: BLE001  (the server must outlive any one request)
            traceback.print_exc(file=sys.stderr)
            error = ApiError(500, f"Internal error: {type(err).__name__}: {err}",
                             kind="server_error", code="internal_error")
            # A failed join leaves the batch intact; a failed step may not have.
            broken = action == self._step or len(served.batch) != len(served.rows)
            victims = [r.job for r in served.rows] if broken else []
            for job in victims + [job for job in args if job not in victims]:
                job.emit(("error", error))
                job.cancel()  # a failed job that had joined leaves at the next step
            if broken:
                served.rows = []
                served.batch = DecodeBatch(served.loaded.model)
