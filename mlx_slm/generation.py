"""The generation loop: prompt ids in, token ids out; text and timings wrap around it."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx

from mlx_slm.cache import BufferView, make_cache
from mlx_slm.sample import LogitsProcessor, Sampler, greedy

PREFILL_STEP = 512


class DecodeStep:
    """One decode step of batch 1 as a compiled function of (token, position, buffers).

    Compiling removes the per-token graph building and fuses the elementwise work, which
    is what limits small models: the host cost per token roughly halves. The trace
    captures the model's weights: the caller keeps one step per model for as long as the
    weights stay the same (a chat keeps it across turns), and makes a new one after
    quantizing or recasting.
    """

    def __init__(self, model):
        self.model = model
        self._logits = mx.compile(self._forward)
        # Greedy decoding without logits processors also compiles the argmax.
        self._greedy = mx.compile(lambda *args: self._forward(*args, argmax=True))

    def _forward(self, token: mx.array, pos: mx.array, *buffers: mx.array, argmax=False):
        views = [BufferView(k, v, pos) for k, v in zip(buffers[::2], buffers[1::2])]
        mask = mx.arange(buffers[0].shape[2]) <= pos
        logits = self.model(token, views, mask)[:, -1, :]
        out = mx.argmax(logits, axis=-1) if argmax else logits
        return (out, *[a for view in views for a in (view.keys, view.values)])

    def __call__(self, token: mx.array, cache: list, greedy: bool = False) -> mx.array:
        """Logits [1, vocab] (or with `greedy`, the argmax token [1]) for `token` [1, 1];
        appends its keys and values to `cache`."""
        offset = cache[0].offset
        if offset + 1 > cache[0].capacity:  # the layers' buffers grow in lockstep
            for layer_cache in cache:
                layer_cache.reserve(offset + 1)
        buffers = [a for c in cache for a in (c.keys, c.values)]
        compiled = self._greedy if greedy else self._logits
        logits, *buffers = compiled(token, mx.array(offset, mx.int32), *buffers)
        for i, layer_cache in enumerate(cache):
            layer_cache.keys, layer_cache.values = buffers[2 * i], buffers[2 * i + 1]
            layer_cache.offset = offset + 1
        return logits


def prefill(model, tokens: mx.array, cache: list, step: int = PREFILL_STEP) -> mx.array:
    """Run `tokens` [L] through the model into `cache`; return the last position's logits."""
    while tokens.size > step:
        model.hidden(tokens[None, :step], cache)
        mx.eval([c.state for c in cache])
        tokens = tokens[step:]
    # Only the last position needs the vocab projection.
    return model.logits(model.hidden(tokens[None], cache)[:, -1, :])


def generate_tokens(
    model,
    prompt: list[int],
    *,
    cache: list | None = None,
    sampler: Sampler = greedy,
    logits_processors: list[LogitsProcessor] = (),
    max_tokens: int = 256,
    stop_ids: tuple[int, ...] = (),
    prefill_step: int = PREFILL_STEP,
    compiled: bool = True,
    step: DecodeStep | None = None,
    constraint=None,
) -> Iterator[int]:
    """Yield generated token ids; ends at a stop id (not yielded) or after `max_tokens`.

    `step` is the model's compiled decode step, to reuse across calls (one is made if
    None); `compiled=False` runs the model eagerly instead.

    Decoding is pipelined: the graph for token n+1 is built and queued with
    `mx.async_eval` before token n is read back to the host. A `constraint`
    (mlx_slm.constrain.Constraint) masks the logits before sampling, and ends generation
    once its output is complete.
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    cache = make_cache(model) if cache is None else cache
    history = mx.array(prompt, dtype=mx.uint32)

    def choose(logits: mx.array) -> mx.array:
        nonlocal history
        for process in logits_processors:
            logits = process(history, logits)
        token = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        if logits_processors:
            history = mx.concatenate([history, token.astype(mx.uint32)])
        return token

    if constraint is not None:
        if compiled:
            step = step or DecodeStep(model)

            def forward(t):
                return step(t, cache)
        else:
            def forward(t):
                return model(t, cache)[:, -1, :]
        yield from _constrained(forward, prefill(model, history, cache, prefill_step), choose,
                                constraint, max_tokens, stop_ids)
        return
    if compiled:
        step = step or DecodeStep(model)
        if sampler is greedy and not logits_processors:
            def advance(t):
                return step(t, cache, greedy=True)
        else:
            def advance(t):
                return choose(step(t, cache))
    else:
        def advance(t):
            return choose(model(t, cache)[:, -1, :])
    token = choose(prefill(model, history, cache, prefill_step))
    mx.async_eval(token)
    for n in range(max_tokens):
        next_token = None
        if n + 1 < max_tokens:
            next_token = advance(token[:, None])
            mx.async_eval(next_token)
        value = token.item()
        if value in stop_ids:
            return
        yield value
        token = next_token


def _constrained(forward, logits, choose, constraint, max_tokens, stop_ids) -> Iterator[int]:
    """The decode loop with a grammar mask: the host computes the mask for token n+1 while
    the model's forward for it runs, then the sampling is queued on the masked logits."""
    mx.async_eval(logits)
    width = logits.shape[-1]
    for n in range(max_tokens):
        token = choose(mx.where(constraint.mask(width), logits, -mx.inf))
        mx.async_eval(token)  # its own evaluation, so reading it waits for it alone
        if n + 1 < max_tokens:
            logits = forward(token[:, None])
            mx.async_eval(logits)
        value = token.item()
        if value in stop_ids:
            return
        constraint.accept(value)
        yield value
        if constraint.is_done():
            return


@dataclass
class Generation:
    """The outcome of one generation: text, ids and honest timings."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    prompt_s: float = 0.0  # prompt processing, up to the first generated token
    generation_s: float = 0.0  # from the first generated token to the last
    load_s: float = 0.0
    finish_reason: str = "length"
    valid: bool | None = None  # with a constraint: whether the text satisfies it

    @property
    def generation_tokens(self) -> int:
        return len(self.tokens)

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        # The clock starts at the first token, so it times the tokens after it.
        n = self.generation_tokens - 1
        return n / self.generation_s if n > 0 and self.generation_s > 0 else 0.0


def text_pieces(
    model,
    tokenizer,
    prompt: list[int],
    *,
    max_tokens: int = 256,
    sampler: Sampler = greedy,
    logits_processors: list[LogitsProcessor] = (),
    stop_strings: tuple[str, ...] = (),
    ignore_eos: bool = False,
    cache: list | None = None,
    step: DecodeStep | None = None,
    result: Generation | None = None,
    clock: Callable[[], float] = time.perf_counter,
    constraint=None,
    token_source: Callable[..., Iterator[int]] | None = None,
) -> Iterator[str]:
    """Generate, yielding each new piece of text; `result` (a Generation) is filled as it goes.

    Stop strings end generation and are not part of the text. A caller that is interrupted
    still holds in `result` what was generated so far. With a `constraint`, a complete
    output ends as "eos" and `result.valid` says whether the text (after any stop string)
    satisfies it. `token_source` (default `generate_tokens`) yields the ids; a
    speculative.Draft's `generate_tokens` decodes with a draft (not with a constraint).
    """
    result = result if result is not None else Generation()
    result.prompt_tokens = len(prompt)
    detokenizer = tokenizer.detokenizer()
    stop_ids = () if ignore_eos else (tokenizer.eos_id,)
    holdback = max((len(s) for s in stop_strings), default=1) - 1
    emitted = 0
    start = clock()
    first = None
    options = {"constraint": constraint} if constraint is not None else {}
    tokens = (token_source or generate_tokens)(
        model, prompt, cache=cache, sampler=sampler, logits_processors=logits_processors,
        max_tokens=max_tokens, stop_ids=stop_ids, step=step, **options,
    )
    result.finish_reason = "length"
    for token in tokens:
        now = clock()
        if first is None:
            first = now
            result.prompt_s = now - start
        result.generation_s = now - first
        result.tokens.append(token)
        detokenizer.add(token)
        text = detokenizer.text
        cut = _find_stop(text, stop_strings)
        if cut is not None:
            result.text = text[:cut]
            result.finish_reason = "stop"
            _judge(result, constraint)
            if cut > emitted:
                yield result.text[emitted:]
            return
        # Hold back a possible stop string's beginning until it is decided.
        safe = len(text) - holdback if stop_strings else len(text)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
        result.text = text
    else:
        if len(result.tokens) < max_tokens or (constraint is not None and constraint.is_done()):
            result.finish_reason = "eos"
    detokenizer.finish()
    result.text = detokenizer.text
    cut = _find_stop(result.text, stop_strings)
    if cut is not None:
        result.text = result.text[:cut]
        result.finish_reason = "stop"
    _judge(result, constraint)
    if len(result.text) > emitted:
        yield result.text[emitted:]


def _judge(result: Generation, constraint) -> None:
    if constraint is not None:
        result.valid = constraint.matches(result.text)


def stream_text(model, tokenizer, prompt: list[int], *,
                on_text: Callable[[str], None] | None = None,
                result: Generation | None = None, **options) -> Generation:
    """`text_pieces`, calling `on_text` with each piece; returns the Generation."""
    result = result if result is not None else Generation()
    for piece in text_pieces(model, tokenizer, prompt, result=result, **options):
        if on_text is not None:
            on_text(piece)
    return result


def _find_stop(text: str, stop_strings: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return min(hits) if hits else None
