"""Samplers (log-probs -> token ids) and logits processors, built once by factories."""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import mlx.core as mx

from mlx_slm.errors import SlmError

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]

# The valid range of each sampling option, shared with the CLI's checks.
RANGES = {
    "temperature": (0.0, None),
    "top_p": (0.0, 1.0),
    "top_k": (0, None),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (0.0, None),
}


def check_range(name: str, value: float) -> None:
    if not math.isfinite(value):  # inf would pass the ranges and sample nonsense
        raise SlmError(f"{name.replace('_', '-')} must be a finite number, got {value}.")
    low, high = RANGES[name]
    ok = value >= low and (high is None or value <= high)
    if name == "repetition_penalty":
        ok = value > low
    if not ok:
        span = f"> {low}" if name == "repetition_penalty" else (
            f">= {low}" if high is None else f"between {low} and {high}"
        )
        raise SlmError(f"{name.replace('_', '-')} must be {span}, got {value}.")


def greedy(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


def make_sampler(
    temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0
) -> Sampler:
    """A sampler over log-probs [B, V]. Temperature 0 is greedy (the filters are moot);
    otherwise a `FilteredSampler`, which also gives the distribution it draws from. A
    sampling one takes an optional PRNG `key` (default: MLX's global generator)."""
    for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                        ("min_p", min_p)):
        check_range(name, value)
    if temperature == 0:
        return greedy
    return FilteredSampler(temperature, top_p, top_k, min_p)


@dataclass(frozen=True)
class FilteredSampler:
    """Draws a token after temperature scaling, then top-k, top-p (smallest set whose mass
    reaches p) and min-p (tokens with at least min_p times the top token's probability)."""

    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def logits(self, logprobs: mx.array) -> mx.array:
        """The scaled and filtered logits the draw is made from (-inf where filtered out)."""
        logits = logprobs * (1.0 / self.temperature)
        if self.top_k > 0:
            logits = apply_top_k(logits, self.top_k)
        if self.top_p < 1.0:
            logits = apply_top_p(logits, self.top_p)
        if self.min_p > 0.0:
            logits = apply_min_p(logits, self.min_p)
        return logits

    def __call__(self, logprobs: mx.array, key: mx.array | None = None) -> mx.array:
        return mx.random.categorical(self.logits(logprobs), axis=-1, key=key)

    def distribution(self, logprobs: mx.array) -> mx.array:
        """The probabilities [B, V] that a call draws from (speculative sampling needs them)."""
        return mx.softmax(self.logits(logprobs), axis=-1, precise=True)


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    if k >= logits.shape[-1]:
        return logits
    kth = mx.min(mx.topk(logits, k, axis=-1), axis=-1, keepdims=True)
    return mx.where(logits >= kth, logits, -mx.inf)


def apply_top_p(logits: mx.array, p: float) -> mx.array:
    order = mx.argsort(-logits, axis=-1)
    sorted_probs = mx.take_along_axis(mx.softmax(logits, axis=-1), order, axis=-1)
    # Keep a token while the mass of the tokens ranked above it is still below p; the top
    # token always stays, so p=0 is greedy rather than an empty (uniform) set.
    keep_sorted = (mx.cumsum(sorted_probs, axis=-1) - sorted_probs) < p
    keep_sorted = keep_sorted | (mx.arange(logits.shape[-1]) == 0)
    keep = mx.put_along_axis(mx.zeros(logits.shape, mx.bool_), order, keep_sorted, axis=-1)
    return mx.where(keep, logits, -mx.inf)


def apply_min_p(logits: mx.array, min_p: float) -> mx.array:
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    threshold = mx.max(logprobs, axis=-1, keepdims=True) + mx.log(mx.array(min_p))
    return mx.where(logprobs >= threshold, logits, -mx.inf)


def make_repetition_penalty(penalty: float, context_size: int = 64) -> LogitsProcessor:
    """CTRL-style penalty on the last `context_size` tokens: positive logits are divided by
    `penalty`, negative ones multiplied, once per distinct token."""
    check_range("repetition_penalty", penalty)
    if context_size < 1:
        raise SlmError(f"repetition-context must be >= 1, got {context_size}.")

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        recent = tokens[-context_size:]
        if recent.size == 0:
            return logits
        selected = logits[:, recent]
        selected = mx.where(selected < 0, selected * penalty, selected / penalty)
        logits[:, recent] = selected
        return logits

    return process


def make_occurrence_penalty(frequency: float = 0.0, presence: float = 0.0,
                            start: int = 0) -> LogitsProcessor:
    """OpenAI's frequency and presence penalties: each token's logit less `frequency` times
    its count in `tokens[start:]` (the generated part), less `presence` if it occurs there."""

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[start:]
        if generated.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), logits.dtype).at[generated].add(1)
        return logits - (frequency * counts + presence * (counts > 0)).astype(logits.dtype)

    return process


def make_logit_bias(bias: tuple[tuple[int, float], ...]) -> LogitsProcessor:
    """OpenAI's logit_bias: (token id, value) pairs added to those tokens' logits."""
    ids = mx.array([i for i, _ in bias], dtype=mx.uint32)
    values = mx.array([v for _, v in bias], dtype=mx.float32)

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        return logits.at[:, ids].add(values.astype(logits.dtype))

    return process


def make_logits_processors(repetition_penalty: float | None = None,
                           repetition_context: int = 64) -> list[LogitsProcessor]:
    if repetition_penalty is None or repetition_penalty == 1.0:
        return []
    return [make_repetition_penalty(repetition_penalty, repetition_context)]


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling settings a user chose, built once (by the CLI decorator or a caller)
    and turned into a sampler and logits processors where generation starts."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.2
    repetition_context: int = 64
    seed: int | None = None
    # OpenAI's fields (the server's); the defaults add no processor.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] | None = None  # None, not (): JSON keeps it

    def sampler(self) -> Sampler:
        return make_sampler(self.temperature, self.top_p, self.top_k, self.min_p)

    def logits_processors(self, prompt_length: int = 0) -> list[LogitsProcessor]:
        """`prompt_length`: the history's prompt, which the OpenAI penalties skip."""
        processors = make_logits_processors(self.repetition_penalty, self.repetition_context)
        if self.frequency_penalty or self.presence_penalty:
            processors.append(make_occurrence_penalty(
                self.frequency_penalty, self.presence_penalty, prompt_length))
        if self.logit_bias:
            processors.append(make_logit_bias(self.logit_bias))
        return processors

    def as_dict(self) -> dict:
        return asdict(self)
