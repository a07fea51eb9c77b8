"""Batched generation gives each row exactly what it would get alone."""

import mlx.core as mx
import pytest

from mlx_slm.batch import attention_mask, generate_batch, left_pad
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model
from mlx_slm.sample import make_logits_processors
from tests.instruct_fixtures import make_model_dir

PROMPTS = [
    [1, 450, 7483, 310, 8046, 338],
    [1, 42],
    [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
    [1, 450],
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_model_dir(tmp_path_factory.mktemp("batch") / "tiny"))[0]


def rows_of(steps, n):
    rows = [[] for _ in range(n)]
    for step in steps:
        for row, token in zip(rows, step):
            if token is not None:
                row.append(token)
    return rows


@pytest.mark.parametrize("penalty", [None, 1.3])
@pytest.mark.parametrize("prefill_step", [512, 4])
def test_batched_greedy_equals_one_at_a_time(model, penalty, prefill_step):
    processors = make_logits_processors(penalty)
    alone = [list(generate_tokens(model, p, max_tokens=12, logits_processors=processors))
             for p in PROMPTS]
    assert len({tuple(a) for a in alone}) == len(PROMPTS)  # the rows really differ
    batched = rows_of(generate_batch(model, PROMPTS, max_tokens=12, logits_processors=processors,
                                     prefill_step=prefill_step), len(PROMPTS))
    assert batched == alone


def test_rows_stop_at_their_own_stop_id(model):
    alone = [list(generate_tokens(model, p, max_tokens=10)) for p in PROMPTS]
    stop = alone[0][3]
    expected = [a[: a.index(stop)] if stop in a else a for a in alone]
    steps = list(generate_batch(model, PROMPTS, max_tokens=10, stop_ids=(stop,)))
    assert rows_of(steps, len(PROMPTS)) == expected
    assert all(step[0] is None for step in steps[3:])  # row 0 stays stopped
    # When every row has stopped, generation ends early.
    firsts = tuple(a[0] for a in alone)
    assert list(generate_batch(model, PROMPTS, max_tokens=10, stop_ids=firsts)) == []


def test_one_row_matches_the_plain_generator(model):
    assert rows_of(generate_batch(model, [PROMPTS[0]], max_tokens=8), 1) == [
        list(generate_tokens(model, PROMPTS[0], max_tokens=8))]


def test_left_padding_and_mask():
    tokens, pads = left_pad([[1, 2, 3], [1, 9]], pad_id=0)
    assert tokens.tolist() == [[1, 2, 3], [0, 1, 9]] and pads.tolist() == [0, 1]
    mask = attention_mask(pads, offset=0, length=3)
    assert mask.shape == (2, 1, 3, 3)
    assert mask[1, 0].tolist() == [
        [True, False, False],  # the padding query sees only itself (no empty softmax row)
        [False, True, False],  # real queries never see the padding key
        [False, True, True],
    ]
    step = attention_mask(pads, offset=3, length=1)
    assert step[:, 0, 0].tolist() == [[True] * 4, [False, True, True, True]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)


def test_sampling_runs_per_row(model):
    from mlx_slm.sample import make_sampler

    mx.random.seed(0)
    rows = rows_of(generate_batch(model, [PROMPTS[1]] * 3, sampler=make_sampler(5.0),
                                  max_tokens=6), 3)
    assert all(len(r) == 6 for r in rows) and len({tuple(r) for r in rows}) == 3
