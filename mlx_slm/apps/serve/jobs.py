"""A request's life in the worker (`Job`): its prepared prompt, its parameters, where its
events go, and its timings.

The HTTP side gets a Job from `Worker.prepare` and reads its events; the worker thread
decodes it as one row of the batcher (`mlx_slm.batch_generation.Row`) and fills in its
timings. Events are ("token", id, text piece, logprobs | None), ("end", finish_reason,
held-back text) and ("error", exception): engine exceptions, which HTTP maps to statuses.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlx_slm.apps.serve.protocol import Params
from mlx_slm.chat_format import PreparedPrompt
from mlx_slm.generation import generation_tps, tokens_per_second


@dataclass(eq=False)
class Job:
    """One generation request: its prepared prompt, checked parameters, and where events go."""

    model: str
    prepared: PreparedPrompt
    params: Params
    report: dict  # backend, BLAS, dtype: which kernels produced the figures
    emit: Callable[[tuple], None] | None = None  # called from the worker thread; thread-safe
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_at: float | None = None
    last_at: float | None = None
    cached_tokens: int = 0
    generated: int = 0  # tokens chosen, the one that completed a stop string included

    @property
    def prompt(self) -> list[int]:
        return self.prepared.ids

    @property
    def max_tokens(self) -> int:
        return self.prepared.max_tokens

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
            "prompt_tps": tokens_per_second(len(self.prompt) - self.cached_tokens, prompt_s),
            "generation_s": generation_s,
            "generation_tps": generation_tps(self.generated, generation_s),
        }
