"""A request's life in the worker (`Job`) and one running row of a batch (`Row`).

The HTTP side makes a Job and reads its events; the worker thread fills in its timings.
Events are ("token", id, logprobs | None), ("end", finish_reason) and ("error", ApiError).
"""

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx

from mlx_slm.apps.serve.protocol import Params
from mlx_slm.constrain import Constraint
from mlx_slm.sample import greedy


@dataclass
class Job:
    """One generation request: prompt ids, checked parameters, and where events go."""

    model: str
    prompt: list[int]
    params: Params
    max_tokens: int
    emit: Callable[[tuple], None]  # called from the worker thread; must be thread-safe
    stop_ids: tuple[int, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_at: float | None = None
    last_at: float | None = None
    cached_tokens: int = 0
    generated: int = 0

    def cancel(self) -> None:
        """Ask the worker to drop this request at its next step (thread-safe)."""
        self.cancelled.set()

    def timings(self) -> dict:
        """Queue wait, time to first token and speeds, in seconds and tokens/s."""
        started = self.started_at or self.queued_at
        first = self.first_at or started
        last = self.last_at or first
        prompt_s, generation_s = first - started, last - first
        return {
            "queue_s": started - self.queued_at,
            "ttft_s": first - self.queued_at,
            "prompt_s": prompt_s,
            "prompt_tps": (len(self.prompt) - self.cached_tokens) / prompt_s if prompt_s else 0.0,
            "generation_s": generation_s,
            "generation_tps": (self.generated - 1) / generation_s if generation_s else 0.0,
        }


class Row:
    """A job's sampling state while it decodes: sampler, processors, history, random key."""

    def __init__(self, job: Job, vocab=None):
        p = job.params
        options = p.sampling
        self.job = job
        self.sampler = options.sampler()
        self.processors = options.logits_processors(len(job.prompt))
        # A response_format's grammar (the vocabulary is the served model's, built once).
        self.constraint = Constraint(p.constraint, vocab) if p.constraint is not None else None
        self.plain = options.temperature == 0 and not self.processors and self.constraint is None
        self.history = mx.array(job.prompt, dtype=mx.uint32) if self.processors else None
        # Each row draws from its own key, so a seed gives the same text in any batch.
        seed = options.seed if options.seed is not None else random.getrandbits(63)
        self.key = mx.random.key(seed)
        self.sequence = list(job.prompt)  # the ids whose keys and values are cached
        self.token: int | None = None  # the last chosen id, fed at the next step

    def choose(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """The next token [1] from logits [1, vocab], as `generation.generate_tokens` picks,
        and the log-probs it was drawn from (after the grammar's mask, if any)."""
        if self.constraint is not None:
            logits = mx.where(self.constraint.mask(logits.shape[-1]), logits, -mx.inf)
        for process in self.processors:
            logits = process(self.history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if self.sampler is greedy:
            token = mx.argmax(logprobs, axis=-1)
        else:
            # Split as MLX's global generator does, so a seed draws what `mx.random.seed` would.
            self.key, key = mx.random.split(self.key)
            token = self.sampler(logprobs, key=key)
        if self.processors:
            self.history = mx.concatenate([self.history, token.astype(mx.uint32)])
        return token, logprobs
