"""Speculative decoding: a small draft model proposes tokens, the target checks them at once.

A round: the draft decodes K tokens after the last chosen one (its own cache, compiled
steps); the target runs that token plus the K drafts as one forward pass of K+1 positions;
the drafts it agrees with are kept, plus one token of its own (a correction, or a bonus when
all K pass), and both caches forget the rest. Greedy output equals the target's own greedy
output; with sampling, the acceptance rule of Leviathan et al. and Chen et al. (2023) keeps
the target's output distribution exactly.
"""

import os
import time
from collections.abc import Iterator

import mlx.core as mx

from mlx_slm.cache import make_cache
from mlx_slm.chooser import TokenChooser
from mlx_slm.draft_policy import AdaptiveK, DraftStats
from mlx_slm.errors import SlmError
from mlx_slm.generation import PREFILL_STEP, DecodeStep, prefill


class Draft:
    """A draft model for speculative decoding, with its compiled decode step.

    `num_draft_tokens` fixes K; None adapts it (AdaptiveK). `stats` describe the last
    generation. `generate_tokens` has the contract of generation.generate_tokens, so
    text_pieces and stream_text take it as their token source.
    """

    def __init__(self, model, num_draft_tokens: int | None = None):
        if num_draft_tokens is not None and not 1 <= num_draft_tokens <= 64:
            raise ValueError(f"num_draft_tokens must be between 1 and 64, got {num_draft_tokens}")
        self.model = model
        self.num_draft_tokens = num_draft_tokens
        self.step = DecodeStep(model)
        self.stats = DraftStats()
        # The draft's cache outlives a generation, like a chat's: `cached_ids` are the ids it
        # holds, so the next generation only feeds what follows their common prefix.
        self.cache = make_cache(model)
        self.cached_ids: list[int] = []

    def generate_tokens(
        self,
        model,
        prompt: list[int],
        *,
        cache: list | None = None,
        chooser: TokenChooser | None = None,
        max_tokens: int = 256,
        stop_ids: tuple[int, ...] = (),
        prefill_step: int = PREFILL_STEP,
        step: DecodeStep | None = None,
        context: list[int] = (),
    ) -> Iterator[int]:
        """Yield the target `model`'s tokens, drafted by this model and verified in rounds;
        ends at a stop id (not yielded) or after `max_tokens`. `context` holds the ids that
        precede `prompt` in the target's `cache` (a chat's earlier turns); `chooser` (default
        greedy) chooses for the target and the draft alike."""
        if not prompt:
            raise ValueError("the prompt must hold at least one token")
        if chooser is not None and chooser.constraint is not None:
            raise ValueError("speculative decoding takes no grammar constraint")
        self.stats = DraftStats()
        run = _Run(self, model, cache if cache is not None else make_cache(model),
                   step or DecodeStep(model), chooser or TokenChooser(history=prompt),
                   list(context), prompt, prefill_step)
        sound, yielded = True, 0
        try:
            for value in run.tokens(max_tokens):
                if value in stop_ids:
                    return
                yield value
                yielded += 1
        except GeneratorExit:  # the caller stopped at a yield: the caches are consistent
            raise
        except BaseException:  # e.g. Ctrl-C mid-round: the draft's cache may be mid-update
            sound = False
            raise
        finally:
            run.settle(sound, len(context) + len(prompt) + yielded)


class _Run:
    """The state of one speculative generation: both caches, the history, the adaptive K.

    Invariant between rounds: `last` is the newest chosen token, already yielded and fed to
    neither model; the target's cache holds everything before it, and the draft's cache
    holds everything before `pending` (which ends with `last`).
    """

    def __init__(self, draft: Draft, model, cache, step, chooser, context, prompt, prefill_step):
        if draft.model.args.vocab_size != model.args.vocab_size:
            raise SlmError(f"The draft's vocabulary ({draft.model.args.vocab_size} tokens) "
                           f"differs from the target's ({model.args.vocab_size}).")
        self.draft, self.model, self.cache, self.step = draft, model, cache, step
        self.chooser = chooser
        self.draft_cache = draft.cache
        self.ids = context + prompt  # everything fed or chosen so far
        keep = min(len(os.path.commonprefix([draft.cached_ids, self.ids])), len(self.ids) - 1)
        for layer in self.draft_cache:
            layer.trim(layer.offset - keep)
        self.draft_feed = self.ids[keep:-1]  # the draft's part of the prompt, but the last id
        self.prompt = mx.array(prompt, dtype=mx.uint32)
        self.prefill_step = prefill_step
        self.adapt = AdaptiveK(draft.num_draft_tokens)
        self.stats = draft.stats

    def tokens(self, max_tokens: int) -> Iterator[int]:
        if max_tokens <= 0:
            return
        first = self.chooser.choose(
            prefill(self.model, self.prompt, self.cache, self.prefill_step))[0]
        mx.async_eval(first)  # the draft reads the prompt meanwhile
        pending = [self.ids[-1]]
        if self.draft_feed:
            prefill(self.draft.model, mx.array(self.draft_feed, dtype=mx.uint32),
                    self.draft_cache, self.prefill_step)
            mx.eval([c.state for c in self.draft_cache])
        last = first.item()
        self.ids.append(last)
        yield last
        pending.append(last)
        produced = 1
        while produced < max_tokens:
            k = min(self.adapt.next(), max_tokens - produced - 1)
            start = time.perf_counter()
            if k == 0:  # the rest of the pause runs as one pipelined stretch
                n = min(1 + self.adapt.pause, max_tokens - produced)
                self.adapt.pause -= n - 1
                for value in self._plain_run(last, n):
                    self.stats.plain_tokens += 1
                    pending.append(value)
                    produced += 1
                    last = value
                    yield value
                continue
            drafted = self._round(pending, k)
            if drafted is None:  # the draft is too slow: it has read `pending`, no more
                new = [self._plain(last)]
                self.stats.plain_tokens += 1
                pending = new
            else:
                new, kept_all = drafted
                self.adapt.update(k, len(new) - 1, time.perf_counter() - start)
                # A kept last draft was never fed to the draft model.
                pending = new[-2:] if kept_all else new[-1:]
            for value in new:
                yield value
                produced += 1
            last = new[-1]

    def _plain_run(self, last: int, n: int) -> Iterator[int]:
        """`n` target decode steps after `last`, pipelined as in generate_tokens (the draft
        does not see them); each step's time goes to the adaptive K."""
        def advance(token: mx.array) -> mx.array:
            if self.chooser.plain:
                return self.step(token[:, None], self.cache, greedy=True)
            return self.chooser.choose(self.step(token[:, None], self.cache))[0]

        token = advance(mx.array([last], dtype=mx.uint32))
        mx.async_eval(token)
        start = time.perf_counter()
        for i in range(n):
            following = None
            if i + 1 < n:
                following = advance(token)
                mx.async_eval(following)
            value = token.item()
            now = time.perf_counter()
            self.adapt.plain_step(now - start)
            self.stats.plain_step_s.append(now - start)
            start = now
            self.ids.append(value)
            yield value
            token = following

    def _plain(self, last: int) -> int:
        """One target decode step after `last` (the draft does not see it yet)."""
        token = mx.array([[last]], dtype=mx.uint32)
        if self.chooser.plain:
            value = self.step(token, self.cache, greedy=True).item()
        else:
            value = self.chooser.choose(self.step(token, self.cache))[0].item()
        self.ids.append(value)
        return value

    def _round(self, pending: list[int], k: int) -> tuple[list[int], bool] | None:
        """Draft k tokens, verify them in one target pass; returns the tokens chosen (the
        accepted drafts plus the target's own) and whether all k drafts were accepted, or
        None if the draft's first step showed it too slow to pay."""
        drafts, draft_probs = [], []
        # Greedy without processors lets the compiled step take the argmax too.
        argmax = self.chooser.plain
        if len(pending) == 1:
            out = self.draft.step(mx.array([pending], dtype=mx.uint32), self.draft_cache,
                                  greedy=argmax)
        else:
            out = prefill(self.draft.model, mx.array(pending, dtype=mx.uint32),
                          self.draft_cache, self.prefill_step)
            out = mx.argmax(out, axis=-1) if argmax else out
        if self.adapt.time_draft and len(pending) <= 2:  # one or two ids: about one step
            start = time.perf_counter()
            mx.eval(out)
            if self.adapt.draft_too_slow(time.perf_counter() - start):
                return None
        for i in range(k):
            ahead = mx.concatenate(drafts) if drafts else None
            token, probs = (out, None) if argmax else self._pick(out, ahead)
            drafts.append(token)
            draft_probs.append(probs)
            if i + 1 < k:  # the last draft is fed to the draft model next round, if kept
                out = self.draft.step(token[:, None], self.draft_cache, greedy=argmax)
        drafted = mx.concatenate(drafts)
        inputs = mx.concatenate([mx.array([pending[-1]], dtype=mx.uint32),
                                 drafted.astype(mx.uint32)])
        target_logits = self.model(inputs[None], self.cache)[0]  # [k+1, vocab]
        if self.chooser.greedy:
            chosen = self._greedy_rows(target_logits, drafted)
            mx.eval(chosen, drafted)
            choices, drafted_ids = chosen.tolist(), drafted.tolist()
            n = next((i for i in range(k) if drafted_ids[i] != choices[i]), k)
            new = drafted_ids[:n] + [choices[n]]
        else:
            new, n = self._sample_rows(target_logits, drafted, mx.concatenate(draft_probs))
        for layer in self.cache:
            layer.trim(k - n)
        if n < k:
            for layer in self.draft_cache:
                layer.trim(k - 1 - n)
        self.stats.drafted += k
        self.stats.accepted += n
        self.stats.rounds += 1
        self.ids.extend(new)
        self.chooser.extend(new)
        return new, n == k

    def _greedy_rows(self, logits: mx.array, drafted: mx.array) -> mx.array:
        """The target's greedy choice at each of the k+1 positions, each row's penalty over
        the history plus the drafts before it (as plain decoding would have it)."""
        if self.chooser.plain:
            return mx.argmax(logits, axis=-1)
        return mx.concatenate([
            mx.argmax(self.chooser.logprobs(logits[i : i + 1], drafted[:i] if i else None),
                      axis=-1)
            for i in range(logits.shape[0])])

    def _sample_rows(self, logits: mx.array, drafted: mx.array,
                     draft_probs: mx.array) -> tuple[list[int], int]:
        """The speculative-sampling rule: keep draft i with probability min(1, p/q); at the
        first rejection draw from normalize(max(0, p - q)); if all pass, draw from p."""
        k = drafted.size
        target_probs = mx.concatenate([
            self.chooser.distribution(
                self.chooser.logprobs(logits[i : i + 1], drafted[:i] if i else None))
            for i in range(k + 1)])  # [k+1, vocab]
        index = drafted[:, None]
        p = mx.take_along_axis(target_probs[:k], index, axis=-1)[:, 0]
        q = mx.take_along_axis(draft_probs, index, axis=-1)[:, 0]
        passed = (mx.random.uniform(shape=(k,), key=self.chooser.next_key()) * q < p).tolist()
        n = next((i for i in range(k) if not passed[i]), k)
        if n < k:
            residual = mx.maximum(target_probs[n] - draft_probs[n], 0.0)
            # p == q makes a rejection impossible in exact arithmetic; rounding may not.
            residual = mx.where(residual.sum() > 0, residual, target_probs[n])
        else:
            residual = target_probs[k]
        token = mx.random.categorical(mx.log(residual), key=self.chooser.next_key())
        return drafted[:n].tolist() + [token.item()], n

    def _pick(self, logits: mx.array, ahead: mx.array | None) -> tuple[mx.array, mx.array]:
        """A draft token [1] chosen from logits [1, vocab] as the target's chooser would
        (the drafts `ahead` in its history), and the distribution it was drawn from."""
        logprobs = self.chooser.logprobs(logits, ahead)
        if self.chooser.greedy:
            return mx.argmax(logprobs, axis=-1), None
        probs = self.chooser.distribution(logprobs)
        return mx.random.categorical(mx.log(probs), key=self.chooser.next_key()), probs

    def settle(self, sound: bool, seen: int) -> None:
        """End a generation: the target's cache keeps at most the `seen` ids before and up to
        the last token yielded, as plain decoding's would (a round may have kept more); the
        draft records which ids its cache holds (none if interrupted mid-round)."""
        for layer in self.cache:
            layer.trim(layer.offset - min(layer.offset, seen))
        offset = self.draft_cache[0].offset if sound else 0
        for layer in self.draft_cache:
            layer.trim(layer.offset - offset)
        self.draft.cached_ids = self.ids[:offset]
