"""Samplers and logits processors on hand-built distributions."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.errors import SlmError
from mlx_slm.sample import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_repetition_penalty,
    make_sampler,
)

PROBS = [0.5, 0.25, 0.15, 0.07, 0.03]


def logprobs(probs=PROBS):
    return mx.log(mx.array([probs]))


def kept(logits):
    return [i for i, v in enumerate(np.array(logits)[0]) if np.isfinite(v)]


def test_greedy_is_argmax():
    sampler = make_sampler(0.0)
    assert sampler(mx.array([[0.1, 3.0, -1.0], [5.0, 0.0, 0.0]])).tolist() == [1, 0]


def test_top_k_keeps_the_k_likeliest():
    assert kept(apply_top_k(logprobs(), 2)) == [0, 1]
    assert kept(apply_top_k(logprobs(), 10)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("p, expected", [(0.5, [0]), (0.6, [0, 1]), (0.75, [0, 1]),
                                         (0.76, [0, 1, 2]), (0.95, [0, 1, 2, 3])])
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    shuffled = [PROBS[i] for i in (3, 0, 4, 2, 1)]  # order must not matter
    got = kept(apply_top_p(logprobs(shuffled), p))
    assert sorted(PROBS.index(shuffled[i]) for i in got) == expected


def test_min_p_is_relative_to_the_top_token():
    assert kept(apply_min_p(logprobs(), 0.3)) == [0, 1, 2]  # >= 0.15
    assert kept(apply_min_p(logprobs(), 0.1)) == [0, 1, 2, 3]  # >= 0.05


def test_sampling_follows_the_distribution_and_the_seed():
    sampler = make_sampler(temperature=1.0)
    mx.random.seed(7)
    draws = sampler(mx.broadcast_to(logprobs(), (20000, 5))).tolist()
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, PROBS, atol=0.015)
    mx.random.seed(7)
    assert sampler(mx.broadcast_to(logprobs(), (20000, 5))).tolist() == draws


def test_low_temperature_sharpens_and_filters_combine():
    mx.random.seed(0)
    sharp = make_sampler(temperature=0.05)(mx.broadcast_to(logprobs(), (2000, 5)))
    assert set(sharp.tolist()) == {0}
    only_two = make_sampler(temperature=1.0, top_k=3, top_p=0.7)
    assert set(only_two(mx.broadcast_to(logprobs(), (5000, 5))).tolist()) == {0, 1}


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    process = make_repetition_penalty(2.0, context_size=2)
    logits = mx.array([[4.0, -4.0, 4.0, 1.0]])
    out = process(mx.array([2, 0, 1, 1]), logits)  # window: [1, 1]
    assert out.tolist() == [[4.0, -8.0, 4.0, 1.0]]
    out = process(mx.array([0, 2]), mx.array([[4.0, -4.0, 4.0, 1.0]]))
    assert out.tolist() == [[2.0, -4.0, 2.0, 1.0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1}, "temperature must be >= 0"),
    ({"top_p": 1.5}, "top-p must be between 0.0 and 1.0"),
    ({"min_p": -0.1}, "min-p must be between"),
    ({"top_k": -2}, "top-k must be >= 0"),
])
def test_invalid_values_are_rejected_with_the_range(kwargs, message):
    with pytest.raises(SlmError, match=message):
        make_sampler(**kwargs)


def test_repetition_penalty_must_be_positive():
    with pytest.raises(SlmError, match="repetition-penalty must be > 0"):
        make_repetition_penalty(0.0)


def test_top_p_zero_keeps_only_the_top_token():
    shuffled = [PROBS[i] for i in (3, 0, 4, 2, 1)]
    assert kept(apply_top_p(logprobs(shuffled), 0.0)) == [1]
    assert kept(apply_top_p(logprobs(), 1.0)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kwargs", [
    {"top_p": 0.0}, {"top_k": 1}, {"min_p": 1.0},
    {"top_p": 0.0, "top_k": 1, "min_p": 1.0},
])
def test_each_narrowest_filter_is_greedy(kwargs):
    # Token 3 is the likeliest; a uniform draw over 5 tokens would hit it ~20% of the time.
    probs = [0.1, 0.2, 0.05, 0.6, 0.05]
    sampler = make_sampler(temperature=1.0, **kwargs)
    mx.random.seed(3)
    assert set(sampler(mx.broadcast_to(logprobs(probs), (2000, 5))).tolist()) == {3}
    dist = np.array(sampler.distribution(logprobs(probs)))[0]
    np.testing.assert_allclose(dist, [0, 0, 0, 1, 0], atol=1e-6)


def test_top_p_one_and_min_p_zero_keep_everything():
    sampler = make_sampler(temperature=1.0, top_p=1.0, min_p=0.0, top_k=0)
    np.testing.assert_allclose(np.array(sampler.distribution(logprobs()))[0], PROBS, rtol=1e-5)
