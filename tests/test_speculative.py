"""Speculative decoding: greedy output equals the target's own, sampling keeps its distribution."""

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm import quant
from mlx_slm.chooser import TokenChooser
from mlx_slm.cpu.layers import prepare
from mlx_slm.draft_policy import AdaptiveK
from mlx_slm.generation import DecodeStep, generate_tokens
from mlx_slm.loader import model_from_weights
from mlx_slm.sample import SamplingOptions
from mlx_slm.speculative import Draft
from mlx_slm.synthetic import random_weights, tiny_config

# Wider weights than the default make peaked distributions, so greedy choices have clear
# margins and the drafts of a quantized copy disagree now and then.
STD = 0.1


def tiny_model(seed: int = 0, bits: int | None = None, vocab_size: int = 512, std=STD):
    config = tiny_config(vocab_size=vocab_size)
    model = model_from_weights(config, random_weights(config, seed, std=std), "synthetic")
    if bits is not None:
        quant.quantize(model, bits=bits, group_size=32)
    mx.eval(model.parameters())
    return prepare(model)


@pytest.fixture(scope="module")
def target():
    return tiny_model(0)


@pytest.fixture(scope="module")
def drafts(target):
    return {"itself": target, "other seed": tiny_model(7), "4-bit copy": tiny_model(0, bits=4)}


PROMPT = [1, 17, 300, 42, 5, 99, 250]


def plain(model, prompt, max_tokens, penalty=1.0, **options):
    return list(generate_tokens(model, prompt, max_tokens=max_tokens,
                                chooser=penalized(prompt, penalty), **options))


def penalized(prompt, penalty: float, context: int = 64) -> TokenChooser:
    """A greedy chooser with a repetition penalty (1.0: none)."""
    sampling = SamplingOptions(repetition_penalty=penalty, repetition_context=context)
    return TokenChooser(sampling, prompt)


@pytest.mark.parametrize("name", ["itself", "other seed", "4-bit copy"])
@pytest.mark.parametrize("k", range(1, 9))
def test_greedy_output_equals_plain_greedy(target, drafts, name, k):
    expected = plain(target, PROMPT, 40)
    draft = Draft(drafts[name], num_draft_tokens=k)
    assert list(draft.generate_tokens(target, PROMPT, max_tokens=40)) == expected
    stats = draft.stats
    assert stats.drafted > 0 and 0 <= stats.accepted <= stats.drafted
    if name == "itself":
        # After the prompt's token, every round yields its k drafts plus the target's bonus
        # token; the last round drafts only what is still needed (none: a plain step).
        assert stats.acceptance_rate == 1.0
        assert stats.rounds == 39 // (k + 1) + (39 % (k + 1) > 1)
        assert stats.accepted + stats.rounds + stats.plain_tokens == 39


def test_the_drafts_span_the_acceptance_range(target, drafts):
    rates = {}
    for name, model in drafts.items():
        draft = Draft(model, num_draft_tokens=4)
        list(draft.generate_tokens(target, PROMPT, max_tokens=60))
        rates[name] = draft.stats.acceptance_rate
    assert rates["itself"] == 1.0
    assert rates["other seed"] < 0.2
    assert 0.2 < rates["4-bit copy"] < 1.0, rates


def test_greedy_equality_with_a_repetition_penalty(target, drafts):
    expected = list(generate_tokens(target, PROMPT, max_tokens=40,
                                    chooser=penalized(PROMPT, 1.5, 16)))
    for name in ("itself", "4-bit copy"):
        draft = Draft(drafts[name], num_draft_tokens=3)
        got = list(draft.generate_tokens(target, PROMPT, max_tokens=40,
                                         chooser=penalized(PROMPT, 1.5, 16)))
        assert got == expected, name
    assert len(set(expected)) > 10  # the penalty made the text vary


@pytest.mark.parametrize("prompt_length", [250, 254, 255, 256])
def test_cache_trimming_across_the_256_position_boundary(target, drafts, prompt_length):
    prompt = [(7 * i + 3) % 500 + 1 for i in range(prompt_length)]
    expected = plain(target, prompt, 24)
    for name in ("4-bit copy", "itself"):
        draft = Draft(drafts[name], num_draft_tokens=7)
        assert list(draft.generate_tokens(target, prompt, max_tokens=24)) == expected, name


def test_a_long_generation_crosses_several_boundaries(target, drafts):
    expected = plain(target, PROMPT, 300, penalty=1.3)
    draft = Draft(drafts["4-bit copy"])
    got = list(draft.generate_tokens(target, PROMPT, max_tokens=300,
                                     chooser=penalized(PROMPT, 1.3)))
    assert got == expected


def test_eos_inside_an_accepted_run_ends_generation(target, drafts):
    full = plain(target, PROMPT, 30)
    stop = full[5]  # a token the draft (the target itself) proposes mid-run
    expected = full[: full.index(stop)]
    draft = Draft(drafts["itself"], num_draft_tokens=8)
    got = list(draft.generate_tokens(target, PROMPT, max_tokens=30, stop_ids=(stop,)))
    assert got == expected
    assert draft.stats.rounds == 1  # the stop came from the first round's accepted drafts


def test_max_tokens_is_exact(target, drafts):
    for n in (1, 2, 3, 9, 10):
        draft = Draft(drafts["itself"], num_draft_tokens=4)
        assert list(draft.generate_tokens(target, PROMPT, max_tokens=n)) == plain(target,
                                                                                   PROMPT, n)


def test_adaptive_k_falls_back_to_plain_decoding_when_drafts_fail(target, drafts):
    expected = plain(target, PROMPT, 120)
    draft = Draft(drafts["other seed"])
    assert list(draft.generate_tokens(target, PROMPT, max_tokens=120)) == expected
    stats = draft.stats
    assert stats.plain_tokens > 80  # most tokens were decoded without drafting
    assert stats.drafted < 30


def test_adaptive_k_grows_when_drafts_pass_and_shrinks_when_they_fail():
    adapt = AdaptiveK(start=4)
    assert [adapt.next() for _ in range(AdaptiveK.FIRST_PLAIN)] == [0] * AdaptiveK.FIRST_PLAIN
    for _ in range(6):
        adapt.update(adapt.next(), adapt.k)
    assert adapt.k == 8
    for _ in range(2):
        adapt.update(adapt.next(), adapt.k // 4)
    assert adapt.k < 8
    fixed = AdaptiveK(fixed=3)
    fixed.update(3, 0)
    assert fixed.next() == 3


def test_adaptive_k_pauses_drafting_when_rounds_are_slower_than_plain_steps():
    adapt = AdaptiveK(start=4)
    for _ in range(AdaptiveK.FIRST_PLAIN):
        adapt.next()
        adapt.plain_step(0.1)  # 10 tok/s alone
    adapt.update(adapt.next(), 2, seconds=0.5)  # 3 tokens in 0.5 s: 6 tok/s
    assert [adapt.next() for _ in range(AdaptiveK.FIRST_PAUSE)] == [0] * AdaptiveK.FIRST_PAUSE
    assert adapt.next() == 1  # the probe
    adapt.update(1, 1, seconds=0.1)  # 2 tokens in 0.1 s: 20 tok/s
    assert adapt.next() >= 1


def test_a_draft_slower_than_the_target_stops_drafting_at_once():
    adapt = AdaptiveK()
    for _ in range(AdaptiveK.FIRST_PLAIN):
        adapt.next()
        adapt.plain_step(0.1)
    assert adapt.time_draft and not adapt.draft_too_slow(0.05)  # twice as fast: keep going
    adapt = AdaptiveK()
    for _ in range(AdaptiveK.FIRST_PLAIN):
        adapt.next()
        adapt.plain_step(0.1)
    assert adapt.draft_too_slow(0.3)
    assert [adapt.next() for _ in range(AdaptiveK.LONGEST_PAUSE)] == [0] * AdaptiveK.LONGEST_PAUSE
    assert not AdaptiveK(fixed=2).time_draft


def chi_square(counts: list[int], probs: list[float]) -> tuple[float, int]:
    """Pearson's statistic over the cells with an expected count >= 5, and its dof."""
    n = sum(counts)
    cells = [(c, n * p) for c, p in zip(counts, probs) if n * p >= 5]
    rest_count = n - sum(c for c, _ in cells)
    rest_expected = n - sum(e for _, e in cells)
    if rest_expected >= 5:
        cells.append((rest_count, rest_expected))
    return sum((c - e) ** 2 / e for c, e in cells), len(cells) - 1


# The chi-square distribution's 0.999 quantiles (dof -> critical value), from tables.
CRITICAL_999 = {5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88, 10: 29.59, 11: 31.26,
                12: 32.91, 13: 34.53, 14: 36.12, 15: 37.70, 16: 39.25, 17: 40.79, 18: 42.31,
                19: 43.82, 20: 45.31, 21: 46.80, 22: 48.27, 23: 49.73, 24: 51.18}


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """Softmax of logits / temperature over the top_k likeliest tokens (rows)."""
    scaled = logits / temperature
    kth = np.sort(scaled, axis=-1)[:, -top_k][:, None]
    weights = np.where(scaled >= kth, np.exp(scaled - scaled.max(-1, keepdims=True)), 0.0)
    return weights / weights.sum(-1, keepdims=True)


def test_speculative_sampling_keeps_the_targets_distribution():
    vocab, temperature, top_k = 16, 1.0, 8
    target = tiny_model(0, vocab_size=vocab, std=0.15)
    draft = Draft(tiny_model(5, vocab_size=vocab, std=0.15), num_draft_tokens=1)
    sampling = SamplingOptions(temperature=temperature, top_k=top_k, repetition_penalty=1.0)
    prompt = [3, 9, 4]
    # The target's exact marginals of the 2nd and 3rd generated tokens, summed over the
    # tokens before them (all 16 x 16 continuations in one batch).
    pairs = np.array([(a, b) for a in range(vocab) for b in range(vocab)])
    batch = np.concatenate([np.tile(prompt, (len(pairs), 1)), pairs], axis=1)
    logits = np.array(target(mx.array(batch))[:, -3:].astype(mx.float32))
    first = filtered_probs(logits[:1, 0], temperature, top_k)[0]  # [V]
    second_given = filtered_probs(logits[::vocab, 1], temperature, top_k)  # [V(a), V]
    third_given = filtered_probs(logits[:, 2], temperature, top_k).reshape(vocab, vocab, vocab)
    joint_ab = first[:, None] * second_given
    second = joint_ab.sum(0)
    third = (joint_ab[:, :, None] * third_given).sum((0, 1))

    step = DecodeStep(target)
    samples = 800
    counts = np.zeros((2, vocab), int)
    drafted = accepted = 0
    for i in range(samples):
        chooser = TokenChooser(replace(sampling, seed=1234 + i), prompt)
        _, b, c = draft.generate_tokens(target, prompt, chooser=chooser, max_tokens=3,
                                        step=step)
        counts[0, b] += 1
        counts[1, c] += 1
        drafted += draft.stats.drafted
        accepted += draft.stats.accepted
    assert drafted == samples  # the 2nd token always came from a verification round
    assert 0.1 < accepted / drafted < 0.9  # both branches of the rule ran
    for observed, probs in ((counts[0], second), (counts[1], third)):
        statistic, dof = chi_square(observed.tolist(), probs.tolist())
        assert dof >= 5, "too few samples for a meaningful test"
        assert statistic < CRITICAL_999[dof], (statistic, dof)


def test_the_chi_square_check_detects_a_wrong_distribution():
    # The same check, with as many samples, rejects draws from the draft's distribution.
    vocab = 16
    target = tiny_model(0, vocab_size=vocab, std=0.15)
    other = tiny_model(5, vocab_size=vocab, std=0.15)
    prompt = [3, 9, 4]
    probs = mx.softmax(target(mx.array([prompt]))[0, -1], precise=True).tolist()
    mx.random.seed(1234)
    draws = mx.random.categorical(other(mx.array([prompt]))[0, -1], num_samples=800).tolist()
    counts = [draws.count(t) for t in range(vocab)]
    statistic, dof = chi_square(counts, probs)
    assert statistic > CRITICAL_999[dof]


def test_a_caller_that_stops_early_leaves_the_target_cache_at_what_it_saw(target, drafts):
    from mlx_slm.cache import make_cache

    cache = make_cache(target)
    draft = Draft(drafts["itself"], num_draft_tokens=6)
    tokens = draft.generate_tokens(target, PROMPT, cache=cache, max_tokens=30)
    seen = [next(tokens) for _ in range(3)]  # the second round kept 6 drafts and a bonus
    tokens.close()
    assert cache[0].offset <= len(PROMPT) + len(seen)
    assert draft.cached_ids == (PROMPT + plain(target, PROMPT, 30))[: len(draft.cached_ids)]


def cast_copy(seed: int, dtype, bits: int | None = None):
    """A tiny model in `dtype` (quantized to `bits` after the cast, if given)."""
    config = tiny_config(vocab_size=512)
    model = model_from_weights(config, random_weights(config, seed, std=STD), "synthetic")
    model.set_dtype(dtype)
    if bits is not None:
        quant.quantize(model, bits=bits, group_size=32)
    mx.eval(model.parameters())
    return prepare(model)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16],
                         ids=["float32", "bfloat16", "float16"])
def test_greedy_with_the_default_penalty_equals_plain_at_every_precision(dtype):
    """The CLI's defaults (greedy, repetition penalty 1.2): a draft never changes the text,
    whatever the dtype and whichever draft (itself, an unrelated model, a 4-bit copy)."""
    target = cast_copy(0, dtype)
    drafts = {"itself": target, "unrelated": cast_copy(7, dtype),
              "4-bit copy": cast_copy(0, dtype, bits=4)}
    prompts = [PROMPT, [1, 400, 401, 402], [1] + list(range(30, 60))]
    for prompt in prompts:
        expected = list(generate_tokens(target, prompt, max_tokens=32,
                                        chooser=TokenChooser(SamplingOptions(), prompt)))
        for name, model in drafts.items():
            draft = Draft(model, num_draft_tokens=4)
            got = list(draft.generate_tokens(target, prompt, max_tokens=32,
                                             chooser=TokenChooser(SamplingOptions(), prompt)))
            assert got == expected, (name, prompt)
