"""The one token chooser: how every decoding loop (plain, batched, speculative, served)
turns a model's logits into the next token.

A chooser belongs to one sequence. It applies the logits processors over that sequence's
history, masks what a grammar forbids, and either takes the argmax or draws from the
filtered distribution with its own random key. The key starts from the seed and is split
per draw exactly as MLX's global generator is, so a seed gives the same text from the CLI,
the Python API and the server, alone or in a batch.
"""

import random

import mlx.core as mx

from mlx_slm.sample import LogitsProcessor, SamplingOptions, greedy

# Plain argmax with no penalty: what a loop uses when no chooser is given.
GREEDY = SamplingOptions(repetition_penalty=1.0)


class TokenChooser:
    """Chooses the next tokens of one sequence from its logits [1, vocab].

    `history` is every id the sequence holds so far (the context the logits processors
    see); `constraint` (a mlx_slm.constrain.Constraint) masks the logits with a grammar.
    `sampler` (log-probs [1, vocab] -> token [1]) replaces the options' own draw, and
    `processors` follow the options' own: a caller's own rules, or a test's scripted ones.
    """

    def __init__(self, sampling: SamplingOptions = GREEDY,
                 history: list[int] | tuple[int, ...] = (), constraint=None, sampler=None,
                 processors: list[LogitsProcessor] | tuple = ()):
        self.sampling = sampling
        self.sampler = sampler or sampling.sampler()
        self.custom = sampler is not None
        self.processors = sampling.logits_processors(len(history)) + list(processors)
        self.constraint = constraint
        self.greedy = self.sampler is greedy
        self.history = mx.array(list(history), dtype=mx.uint32) if self.processors else None
        self.key = None
        if not (self.greedy or self.custom):
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(63)
            self.key = mx.random.key(seed)

    @property
    def plain(self) -> bool:
        """Greedy with nothing to apply: a caller may fuse the argmax into the forward."""
        return self.greedy and not self.processors and self.constraint is None

    def logprobs(self, logits: mx.array, ahead: mx.array | None = None) -> mx.array:
        """The float32 log-probs [1, vocab] a choice is made from: the processors over the
        history (plus the ids `ahead`, not yet chosen: a speculative round's drafts), then
        the grammar's mask. Float32, so that a penalty rounds alike whatever the model's
        dtype and whichever loop computed the logits."""
        logits = logits.astype(mx.float32)
        if self.processors:
            history = self.history if ahead is None else mx.concatenate(
                [self.history, ahead.astype(mx.uint32)])
            for process in self.processors:
                logits = process(history, logits)
        if self.constraint is not None:
            logits = mx.where(self.constraint.mask(logits.shape[-1]), logits, -mx.inf)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)

    def choose(self, logits: mx.array) -> tuple[mx.array, mx.array]:
        """The next token [1] (lazy) and the log-probs it was chosen from; the token joins
        the history. The grammar, which needs the value, advances in `accept`."""
        logprobs = self.logprobs(logits)
        if self.greedy:
            token = mx.argmax(logprobs, axis=-1)
        elif self.custom:
            token = self.sampler(logprobs)
        else:
            token = self.sampler(logprobs, key=self.next_key())
        self.extend(token)
        return token, logprobs

    def distribution(self, logprobs: mx.array) -> mx.array:
        """The probabilities a draw from `logprobs` follows (speculative acceptance needs
        them; a sampling chooser's, since greedy verification compares argmaxes)."""
        return self.sampler.distribution(logprobs)

    def next_key(self) -> mx.array:
        """A fresh key for one draw, split off as MLX's global generator splits its own."""
        self.key, key = mx.random.split(self.key)
        return key

    def extend(self, tokens: mx.array | list[int]) -> None:
        """Tokens chosen elsewhere (accepted drafts) join the history."""
        if self.processors:
            tokens = mx.array(tokens, dtype=mx.uint32) if isinstance(tokens, list) else tokens
            self.history = mx.concatenate([self.history, tokens.astype(mx.uint32)])

    def accept(self, token: int) -> bool:
        """Advance the grammar past `token`; True when the output is complete."""
        if self.constraint is None:
            return False
        self.constraint.accept(token)
        return self.constraint.is_done()
