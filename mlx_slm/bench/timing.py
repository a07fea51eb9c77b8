"""Time one generation run honestly, and summarize repetitions by median and spread."""

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mlx_slm.generation import generation_tps, tokens_per_second

Clock = Callable[[], float]
# Warm-up runs process the full prompt but generate only this many tokens: enough to
# warm every kernel and allocation the timed runs use, at a fraction of their cost.
WARMUP_TOKENS = 8


@dataclass(frozen=True)
class RunTiming:
    """One timed run: the prompt clock stops at the first token, the generation clock starts."""

    prompt_tokens: int
    generated: int
    ttft_s: float  # from the call until the first token is yielded
    generation_s: float  # from the first token to the last

    @property
    def prompt_tps(self) -> float:
        return tokens_per_second(self.prompt_tokens, self.ttft_s)

    @property
    def generation_tps(self) -> float:
        return generation_tps(self.generated, self.generation_s)


@dataclass(frozen=True)
class Spread:
    """Median and spread of one metric over the timed repetitions."""

    median: float
    stdev: float | None  # None from one repetition: no spread to report
    min: float
    max: float


def spread(values: Iterable[float]) -> Spread:
    """Median, sample standard deviation (None for one value), min and max."""
    values = list(values)
    if not values:
        raise ValueError("spread() needs at least one value")
    stdev = statistics.stdev(values) if len(values) > 1 else None
    return Spread(statistics.median(values), stdev, min(values), max(values))


class TimeLimitExceeded(RuntimeError):
    """A cell took longer than its time limit; it is abandoned at the next token."""


def time_run(tokens: Iterable[int], prompt_tokens: int, clock: Clock = time.perf_counter,
             deadline: float = math.inf) -> RunTiming:
    """Drain a lazy token generator, reading the clock at the start and at each token.

    Past `deadline` (a clock reading) the run stops at the next token: a token already
    being computed cannot be interrupted.
    """
    start = clock()
    first = last = None
    count = 0
    for _ in tokens:
        last = clock()
        if first is None:
            first = last
        count += 1
        if last > deadline:
            raise TimeLimitExceeded("the run went past its deadline")
    if first is None:
        raise RuntimeError("the generator yielded no tokens")
    return RunTiming(prompt_tokens, count, first - start, last - first)


def measure(run: Callable[[int], Iterable[int]], prompt_tokens: int, gen_tokens: int,
            reps: int, warmup: int = 1, clock: Clock = time.perf_counter,
            time_limit: float | None = None) -> list[RunTiming]:
    """`warmup` untimed runs, then `reps` timed ones; `run(n)` yields n tokens for the prompt.

    A timed run that stops short (e.g. at EOS) would time a different workload, so it is an
    error: every timed run generates exactly `gen_tokens`. `time_limit` (seconds) bounds
    the whole cell, warm-up included: the runs completed by then are returned (fewer than
    `reps`), or TimeLimitExceeded is raised if there are none.
    """
    deadline = math.inf if time_limit is None else clock() + time_limit
    timings = []
    try:
        for _ in range(warmup):
            time_run(run(min(gen_tokens, WARMUP_TOKENS)), prompt_tokens, clock, deadline)
        for _ in range(reps):
            timing = time_run(run(gen_tokens), prompt_tokens, clock, deadline)
            if timing.generated != gen_tokens:
                raise RuntimeError(f"generated {timing.generated} of {gen_tokens} tokens")
            timings.append(timing)
    except TimeLimitExceeded:
        if not timings:
            raise TimeLimitExceeded(f"stopped after {time_limit:g} s (--time-limit)") from None
    return timings


def summarize(timings: list[RunTiming]) -> dict:
    """Median and spread of TTFT, prompt and generation tok/s over the timed runs."""
    ttft = spread(t.ttft_s for t in timings)
    prompt = spread(t.prompt_tps for t in timings)
    gen = spread(t.generation_tps for t in timings)
    return {"ttft_s": ttft.median, "ttft_s_stdev": ttft.stdev,
            "prompt_tps": prompt.median, "prompt_tps_stdev": prompt.stdev,
            "gen_tps": gen.median, "gen_tps_stdev": gen.stdev,
            "gen_tps_min": gen.min, "gen_tps_max": gen.max}
