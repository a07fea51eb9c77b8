"""The generation loop: prompt ids in, token ids out; text and timings wrap around it."""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import mlx.core as mx

from mlx_slm.cache import BufferView, make_cache
from mlx_slm.chooser import TokenChooser
from mlx_slm.tokenizer import TextStream

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
    chooser: TokenChooser | None = None,
    max_tokens: int = 256,
    stop_ids: tuple[int, ...] = (),
    prefill_step: int = PREFILL_STEP,
    compiled: bool = True,
    step: DecodeStep | None = None,
) -> Iterator[int]:
    """Yield generated token ids; ends at a stop id (not yielded), once the chooser's
    grammar is complete, or after `max_tokens`.

    `chooser` picks each token (default: greedy over `prompt`). `step` is the model's
    compiled decode step, to reuse across calls (one is made if None); `compiled=False`
    runs the model eagerly instead.

    Decoding is pipelined: the graph for token n+1 is built and queued with
    `mx.async_eval` before token n is read back to the host. A grammar's mask needs token
    n on the host, so with one the forward for n+1 is queued and the host computes the
    mask while it runs.
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token")
    cache = make_cache(model) if cache is None else cache
    chooser = chooser or TokenChooser(history=prompt)
    if compiled:
        step = step or DecodeStep(model)
    fused = compiled and chooser.plain  # the compiled step takes the argmax too
    masked = chooser.constraint is not None

    def forward(token: mx.array) -> mx.array:
        if compiled:
            return step(token[:, None], cache, greedy=fused)
        return model(token[:, None], cache)[:, -1, :]

    def choose(logits: mx.array) -> mx.array:
        token = chooser.choose(logits)[0]
        mx.async_eval(token)  # its own evaluation, so reading it waits for it alone
        return token

    token = choose(prefill(model, mx.array(prompt, dtype=mx.uint32), cache, prefill_step))
    for n in range(max_tokens):
        following = None
        if n + 1 < max_tokens:
            following = forward(token)
            if not (fused or masked):
                following = chooser.choose(following)[0]
            mx.async_eval(following)
        value = token.item()
        if value in stop_ids:
            return
        done = chooser.accept(value)
        yield value
        if done:
            return
        token = choose(following) if masked and following is not None else following


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
        return tokens_per_second(self.prompt_tokens, self.prompt_s)

    @property
    def generation_tps(self) -> float:
        return generation_tps(self.generation_tokens, self.generation_s)


def tokens_per_second(tokens: int, seconds: float) -> float:
    """The one rate formula every figure uses; 0.0 when nothing was timed."""
    return tokens / seconds if tokens > 0 and seconds > 0 else 0.0


def generation_tps(generated: int, seconds: float) -> float:
    """Generation speed: the clock starts at the first token, so it times those after it."""
    return tokens_per_second(generated - 1, seconds)


def text_pieces(
    model,
    tokenizer,
    prompt: list[int],
    *,
    max_tokens: int = 256,
    chooser: TokenChooser | None = None,
    stop_strings: tuple[str, ...] = (),
    ignore_eos: bool = False,
    cache: list | None = None,
    step: DecodeStep | None = None,
    result: Generation | None = None,
    clock: Callable[[], float] = time.perf_counter,
    token_source: Callable[..., Iterator[int]] | None = None,
) -> Iterator[str]:
    """Generate, yielding each new piece of text; `result` (a Generation) is filled as it goes.

    Stop strings end generation and are not part of the text. A caller that is interrupted
    still holds in `result` what was generated so far. With a grammar in the `chooser`, a
    complete output ends as "eos" and `result.valid` says whether the text (after any stop
    string) satisfies it. `token_source` (default `generate_tokens`) yields the ids; a
    speculative.Draft's `generate_tokens` decodes with a draft (not with a grammar).
    """
    result = result if result is not None else Generation()
    result.prompt_tokens = len(prompt)
    chooser = chooser or TokenChooser(history=prompt)
    stream = TextStream(tokenizer, stop_strings)
    start = clock()
    first = None
    tokens = (token_source or generate_tokens)(
        model, prompt, cache=cache, chooser=chooser, max_tokens=max_tokens,
        stop_ids=() if ignore_eos else (tokenizer.eos_id,), step=step,
    )
    result.finish_reason = "length"
    for token in tokens:
        now = clock()
        if first is None:
            first = now
            result.prompt_s = now - start
        result.generation_s = now - first
        result.tokens.append(token)
        piece = stream.add(token)
        result.text = stream.text
        if stream.stopped:
            result.finish_reason = "stop"
            _judge(result, chooser)
        if piece:
            yield piece
        if stream.stopped:
            return
    if len(result.tokens) < max_tokens or (
            chooser.constraint is not None and chooser.constraint.is_done()):
        result.finish_reason = "eos"
    piece = stream.finish()
    result.text = stream.text
    if stream.stopped:
        result.finish_reason = "stop"
    _judge(result, chooser)
    if piece:
        yield piece


def _judge(result: Generation, chooser: TokenChooser) -> None:
    if chooser.constraint is not None:
        result.valid = chooser.constraint.matches(result.text)


def stream_text(model, tokenizer, prompt: list[int], *,
                on_text: Callable[[str], None] | None = None,
                result: Generation | None = None, **options) -> Generation:
    """`text_pieces`, calling `on_text` with each piece; returns the Generation."""
    result = result if result is not None else Generation()
    for piece in text_pieces(model, tokenizer, prompt, result=result, **options):
        if on_text is not None:
            on_text(piece)
    return result
