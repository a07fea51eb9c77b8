"""The MLX worker: one thread owns the models (MLX state is not shared across threads) and
decodes every running request of a model together on the one batcher
(mlx_slm.batch_generation): requests join and leave between steps.

HTTP talks to it through `prepare` (a request's prompt, checked and fitted), `submit` and
`stats`. The worker raises and emits engine errors (mlx_slm.errors and the ones below);
only the HTTP layer knows status codes.
"""

import queue
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, replace

import mlx.core as mx

from mlx_slm.apps.serve.errors import (
    InternalError,
    InvalidLogitBias,
    ModelNotNamed,
    ModelNotServed,
    ShuttingDown,
    WontFit,
)
from mlx_slm.apps.serve.jobs import Job
from mlx_slm.apps.serve.metrics import StepTimes
from mlx_slm.apps.serve.protocol import Params
from mlx_slm.apps.serve.served import ServedModel
from mlx_slm.apps.serve.tools import ToolText
from mlx_slm.batch_generation import BatchGenerator, Row
from mlx_slm.chat_format import PromptFormat, Turn
from mlx_slm.chooser import TokenChooser
from mlx_slm.prefix_cache import PrefixCache
from mlx_slm.tokenizer import TextStream

# A cached prefix shorter than this (a BOS, a chat's empty system turn) saves less than
# prefilling the prompt alone costs, against prefilling it together with the other joiners.
MIN_REUSE = 32


@dataclass
class Settings:
    """The worker's limits."""

    max_batch: int = 16
    prefix_cache_bytes: int = 256 * 2**20
    # Adapters served as models of their own: (served name, adapter directory) on the first
    # model (each loaded as its own copy of that model, the adapter applied unfused).
    adapters: tuple[tuple[str, str], ...] = ()
    # Running batches' KV caches; None: 80% of the memory available after loading, less the
    # prefix cache's own bound.
    kv_budget_bytes: int | None = None


class Worker:
    """Owns the models on its own thread; `prepare` and `submit` may be called from any."""

    def __init__(self, names: list[str], load_options, settings: Settings | None = None):
        self.names, self.load_options = names, load_options
        self.settings = settings or Settings()
        self.kv_budget = self.settings.kv_budget_bytes
        self.served: dict[str, ServedModel] = {}
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

    @property
    def models(self) -> list[str]:
        return list(self.served)

    def model_card(self, name: str) -> dict:
        """/v1/models' entry for a served model; an adapter's names its base and directory."""
        card = {"id": name, "object": "model", "created": 0, "owned_by": "mlx-slm"}
        adapter = dict(self.settings.adapters).get(name)
        if adapter is not None:
            card.update(parent=self.names[0], adapter=adapter)
        return card

    def prepare(self, params: Params, chat: bool) -> Job:
        """A request's Job: the model it names, its prompt in the model's format (chat
        messages or a completion prompt), fitted to the context. Tokenizing only: no MLX
        work happens on the caller's thread."""
        name = self.model_name(params.model)
        served = self.served[name]
        if chat:
            system = "\n".join(c for role, c in params.messages if role == "system") or None
            prompt = [Turn(role, c) for role, c in params.messages if role != "system"]
            prompt_format = PromptFormat(chat=True, system=system)
        else:
            prompt, prompt_format = params.prompt, PromptFormat(chat=False)
        loaded = served.loaded
        vocab = loaded.tokenizer.vocab_size
        if any(not 0 <= i < vocab for i, _ in params.sampling.logit_bias or ()):
            raise InvalidLogitBias(f"logit_bias token ids must be between 0 and {vocab - 1}.")
        # A forced tool call ends with its grammar: a stop string could only cut it.
        forced = params.tools is not None and params.tools.forced
        prepared = prompt_format.prepare(
            loaded.tokenizer, loaded.model.args, prompt, max_tokens=params.max_tokens,
            stop=() if forced else params.stop, turn_stops=not forced)
        return Job(name, prepared, params, served.report)

    def submit(self, job: Job) -> None:
        if self.stopping.is_set():
            raise ShuttingDown("The server is shutting down.")
        job.queued_at = time.perf_counter()
        self.inbox.put(job)

    def stats(self) -> dict:
        """What /health and /metrics report, read at the time of asking."""
        return {"models": self.models, "running": self.running, "queued": self.queue_depth,
                "kv_bytes": self.kv_bytes, "prefix_bytes": self.prefix_bytes,
                "step_times": self.step_times, **self.memory}

    def model_name(self, requested: str | None) -> str:
        """The served model a request means: the one named, or the only one served."""
        if requested is None and len(self.served) == 1:
            return next(iter(self.served))
        if requested is None:
            raise ModelNotNamed("'model' is required when several models are served: "
                                f"{', '.join(self.served)}.")
        if requested in self.served:
            return requested
        raise ModelNotServed(f"The model {requested!r} is not served here; GET /v1/models "
                             "lists them.")

    @property
    def queue_depth(self) -> int:
        return self.inbox.qsize() + len(self.pending)

    @property
    def running(self) -> int:
        return sum(len(s.generator) for s in self.served.values())

    @property
    def kv_bytes(self) -> int:
        return sum(s.generator.cache.nbytes for s in self.served.values())

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
                    if len(served.generator):
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
        from mlx_slm.apps.model_loading import open_model
        from mlx_slm.memory import available_bytes

        models = [(name, name, self.load_options) for name in self.names] + [
            (alias, self.names[0], replace(self.load_options, adapter=adapter))
            for alias, adapter in self.settings.adapters]
        for name, model, options in models:
            loaded = open_model(model, options)
            prefix = PrefixCache(self.settings.prefix_cache_bytes)
            self.served[name] = ServedModel(name, loaded, prefix, self.step_times)
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
                job.emit(("end", "cancelled", "", None))
                continue
            if not self._fits(self.served[job.model], job, joining.get(job.model, [])):
                if self.running or joining:
                    break  # wait for rows to leave
                self.pending.popleft()
                job.emit(("error", WontFit(
                    "This request's KV cache would not fit in the memory available.")))
                continue
            joining.setdefault(job.model, []).append(self.pending.popleft())
        start = time.perf_counter()
        start = time.perf_counter()
        for name, jobs in joining.items():
            self._guarded(self.served[name], self._start, *jobs)
        if joining:  # not the idle wait above
            self.step_times.add("admission", start)
        if joining:  # not the idle wait above
            self.step_times.add("admission", start)

    @staticmethod
    def _count(joining: dict[str, list[Job]]) -> int:
        return sum(len(jobs) for jobs in joining.values())

    def _fits(self, served: ServedModel, job: Job, joining: list[Job]) -> bool:
        """Whether the batch with `job` (and the others `joining`) stays within budget: every
        slot holds as many positions as the longest row may reach."""
        reach = [len(j.prompt) + j.max_tokens for j in [*served.jobs.values(), *joining, job]]
        needed = len(reach) * max(reach) * served.token_bytes
        others = self.kv_bytes - served.generator.cache.nbytes
        return needed + others <= self.kv_budget

    def _start(self, served: ServedModel, *jobs: Job) -> None:
        """Prefill the joining jobs (a cached prefix leaves only the rest to run), emit their
        first tokens and let those that go on join the batch."""
        started = time.perf_counter()
        tokenizer = served.loaded.tokenizer
        rows, prefixes = [], []
        for job in jobs:
            job.started_at = started
            job.cached_tokens, cache = served.prefix.lookup(job.prompt, MIN_REUSE)
            p = job.params
            grammar = None
            if p.constraint is not None:
                from mlx_slm.constrain import Constraint

                grammar = Constraint(p.constraint, served.vocab)
            stream = TextStream(tokenizer, job.prepared.stop_strings)
            row = Row(job.prompt, TokenChooser(p.sampling, job.prompt, grammar), job.max_tokens,
                      stop_ids=() if p.ignore_eos else (tokenizer.eos_id,),
                      stream=ToolText(stream) if p.tools is not None else stream,
                      want_logprobs=p.logprobs, cached=job.cached_tokens)
            rows.append(row)
            prefixes.append(cache)
            served.jobs[row] = job
        served.generator.join(rows, prefixes)
        for row in rows:
            self._emit(served, row)
        self.peak_running = max(self.peak_running, self.running)

    def _step(self, served: ServedModel) -> None:
        """One decode step of every running row and one chunk of a long prompt being read
        (mlx_slm.batch_generation); a cancelled request's row leaves first."""
        for row, job in list(served.jobs.items()):
            if job.cancelled.is_set():
                row.end("cancelled")
                served.generator.leave(row)
                self._emit(served, row)
        if not len(served.generator):
            return
        times = self.step_times
        start, copies = time.perf_counter(), times.seconds["copies"]
        rows = served.generator.step()
        # Leaving rows' copies for the prefix cache are counted apart (_keep_prefix).
        times.seconds["decode"] += time.perf_counter() - start - (times.seconds["copies"] - copies)
        times.steps += 1
        start = time.perf_counter()
        for row in rows:
            self._emit(served, row)
        times.add("emit", start)

    def _emit(self, served: ServedModel, row: Row) -> None:
        """Send the row's new token (and its end, if it ended) to its request."""
        job = served.jobs[row]
        now = time.perf_counter()
        if row.finish_reason != "cancelled" and len(row.tokens) > job.generated:
            job.first_at = job.first_at or now
            job.last_at = now
            job.generated = len(row.tokens)
            self.tokens_generated += 1
            job.emit(("token", row.tokens[-1], row.piece, self._logprobs(row, job)))
        if row.finish_reason is not None:
            held = row.stream.finish() if row.finish_reason in ("length", "stop") else ""
            call = None
            if isinstance(row.stream, ToolText):  # a call is given whole, never as text
                held, call = held + row.stream.leftover(), row.stream.call()
            job.emit(("end", row.finish_reason, held, call))
            del served.jobs[row]

    @staticmethod
    def _logprobs(row: Row, job: Job) -> dict | None:
        """The chosen token's text and log-prob and the top alternatives (text, log-prob),
        when the request asked."""
        if not job.params.logprobs:
            return None
        logprobs, value = row.logprobs[0], row.tokens[-1]
        k = job.params.top_logprobs
        top = mx.argsort(-logprobs)[:k] if k else None
        ids = top.tolist() if top is not None else []
        text = row.stream.token_text
        return {"token": text(value), "logprob": logprobs[value].item(),
                "top": list(zip(map(text, ids), logprobs[top].tolist())) if ids else []}

    def _guarded(self, served: ServedModel, action, *args) -> None:
        """Run `action`; on an internal error fail the affected requests, keep serving."""
        try:
            action(served, *args)
        except Exception as err:  # noqa: BLE001  (the server must outlive any one request)
            traceback.print_exc(file=sys.stderr)
            error = InternalError(f"Internal error: {type(err).__name__}: {err}")
            # A failed step may leave the batch unsound: every running request fails with it.
            for job in list(served.jobs.values()) + [j for j in args
                                                       if j not in served.jobs.values()]:
                job.emit(("error", error))
                job.cancel()
            served.jobs.clear()
            served.generator = BatchGenerator(served.loaded.model, on_leave=served._keep_prefix)
