"""Counters for GET /metrics, rendered in the Prometheus text format (version 0.0.4)."""

import threading
import time
from collections import Counter, deque

WINDOW_S = 10.0  # generation tok/s is the rate over this many recent seconds


class StepTimes:
    """Where the worker's time goes, summed over its loop (written by the worker thread only):
    admission (taking jobs in: prefix-cache look-ups, prefill, joining the batch), decode
    (the batched forward and choosing each row's token: pipelined, so not told apart),
    emit (turning tokens into events) and copies (a leaving row's keys and values kept for
    the prefix cache)."""

    PHASES = ("admission", "decode", "emit", "copies")

    def __init__(self):
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0  # decode steps (one per model with running rows, per loop)

    def add(self, phase: str, start: float) -> float:
        """Count the time since `start` to `phase`; returns now, the next phase's start."""
        now = time.perf_counter()
        self.seconds[phase] += now - start
        return now


class Metrics:
    """Request, prompt and token counters, updated by the HTTP side (any thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.recent: deque[float] = deque()  # times of recent generated tokens

    def count_request(self, path: str, status: int) -> None:
        with self.lock:
            self.requests[(path, status)] += 1

    def count_prompt(self, tokens: int) -> None:
        with self.lock:
            self.prompt_tokens += tokens

    def count_token(self) -> None:
        now = time.monotonic()
        with self.lock:
            self.generation_tokens += 1
            self.recent.append(now)
            while self.recent and self.recent[0] < now - WINDOW_S:
                self.recent.popleft()

    def render(self, stats: dict) -> str:
        """The exposition text; gauges come from the worker's `stats()` at scrape time."""
        now = time.monotonic()
        with self.lock:
            while self.recent and self.recent[0] < now - WINDOW_S:
                self.recent.popleft()
            rate = len(self.recent) / WINDOW_S
            requests = sorted(self.requests.items())
            prompt, generation = self.prompt_tokens, self.generation_tokens
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]):
            lines.append(f"# HELP mlx_slm_{name} {help_text}")
            lines.append(f"# TYPE mlx_slm_{name} {kind}")
            lines.extend(f"mlx_slm_{name}{labels} {value}" for labels, value in samples)

        metric("requests_total", "counter", "HTTP requests by path and status.",
               [(f'{{path="{path}",status="{status}"}}', n) for (path, status), n in requests])
        metric("prompt_tokens_total", "counter", "Prompt tokens received.", [("", prompt)])
        metric("generation_tokens_total", "counter", "Tokens generated.", [("", generation)])
        metric("generation_tokens_per_second", "gauge",
               f"Generated tokens per second over the last {WINDOW_S:.0f} s.", [("", rate)])
        metric("queue_depth", "gauge", "Requests waiting to join a batch.",
               [("", stats["queued"])])
        metric("running_requests", "gauge", "Requests decoding in a batch.",
               [("", stats["running"])])
        metric("kv_cache_bytes", "gauge", "Bytes held by running batches' KV caches.",
               [("", stats["kv_bytes"])])
        metric("prefix_cache_bytes", "gauge", "Bytes held by the prefix cache.",
               [("", stats["prefix_bytes"])])
        metric("memory_active_bytes", "gauge", "MLX memory in use.",
               [("", stats["active_bytes"])])
        metric("memory_peak_bytes", "gauge", "MLX peak memory.",
               [("", stats["peak_bytes"])])
        times = stats["step_times"]
        metric("worker_seconds_total", "counter",
               "Worker time by phase (admission includes prefill).",
               [(f'{{phase="{phase}"}}', times.seconds[phase]) for phase in times.PHASES])
        metric("decode_steps_total", "counter", "Batched decode steps.", [("", times.steps)])
        return "\n".join(lines) + "\n"
