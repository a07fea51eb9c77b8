"""The one batcher gives each row exactly the tokens it gets alone, whenever it joins or
leaves, whatever it chooses with; the prefix cache gives the same tokens as a fresh prefill."""

import mlx.core as mx
import pytest

from mlx_slm.batch_cache import BatchCache, prefill_rows
from mlx_slm.batch_generation import BatchGenerator, Row
from mlx_slm.cache import make_cache
from mlx_slm.chooser import GREEDY, TokenChooser
from mlx_slm.generation import generate_tokens, prefill
from mlx_slm.loader import load_model
from mlx_slm.prefix_cache import PrefixCache
from mlx_slm.sample import SamplingOptions
from tests.instruct_fixtures import make_model_dir

PROMPTS = [
    [1, 450, 7483, 310, 8046, 338],
    [1, 42],
    [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20],
    [1, 450],
    [1, 3, 1000, 2000, 3000],
]


@pytest.fixture(scope="module", params=[True, False], ids=["cpu-layers", "model.py"])
def model(request, tmp_path_factory):
    directory = make_model_dir(tmp_path_factory.mktemp("decode") / "tiny")
    return load_model(directory, prepare=request.param)[0]


def alone(model, prompt, n, sampling=GREEDY, stop_ids=()):
    chooser = TokenChooser(sampling, prompt)
    return list(generate_tokens(model, prompt, chooser=chooser, max_tokens=n, stop_ids=stop_ids))


def row(prompt, n, sampling=GREEDY, stop_ids=()):
    return Row(list(prompt), TokenChooser(sampling, prompt), n, stop_ids)


def run(generator, joins: dict[int, list[Row]]) -> None:
    """Join rows at the steps named, then step until every row has ended."""
    for step in range(100):
        if joins.get(step):
            generator.join(joins[step])
        if not len(generator) and step > max(joins):
            return
        if len(generator):
            generator.step()


def test_rows_joining_and_leaving_match_generation_alone(model):
    lengths = [9, 4, 12, 7, 10]
    expected = [alone(model, p, n) for p, n in zip(PROMPTS, lengths)]
    assert len({tuple(a[:4]) for a in expected}) == len(PROMPTS)  # the rows really differ
    rows = [row(p, n) for p, n in zip(PROMPTS, lengths)]
    generator = BatchGenerator(model)
    run(generator, {0: rows[:2], 2: [rows[2]], 3: [rows[3]], 5: [rows[4]]})
    assert [r.tokens for r in rows] == expected
    assert all(r.finish_reason == "length" for r in rows)
    assert len(generator) == 0 and generator.cache.nbytes == 0


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_batched_sampling_and_penalties_equal_alone(model, penalty):
    """Each row chooses with its own history and its own seeded key, as alone."""
    for sampling in (SamplingOptions(repetition_penalty=penalty),
                     SamplingOptions(temperature=1.5, top_p=0.9, seed=4,
                                     repetition_penalty=penalty)):
        expected = [alone(model, p, 10, sampling) for p in PROMPTS]
        rows = [row(p, 10, sampling) for p in PROMPTS]
        run(BatchGenerator(model), {0: rows[:3], 1: rows[3:]})
        assert [r.tokens for r in rows] == expected


def test_rows_end_at_their_own_stop_id(model):
    expected = [alone(model, p, 10) for p in PROMPTS]
    stop = expected[0][3]
    rows = [row(p, 10, stop_ids=(stop,)) for p in PROMPTS]
    run(BatchGenerator(model), {0: rows})
    for r, e in zip(rows, expected):
        assert r.tokens == (e[: e.index(stop)] if stop in e else e)
        assert r.finish_reason == ("stop" if stop in e else "length")


def test_join_and_leave_touch_only_that_row(model):
    """No row moves or changes when another joins; the last row fills a leaver's slot."""
    cache = BatchCache(model)
    firsts = []
    for i, prompt in enumerate(PROMPTS[:3]):
        kv = make_cache(model)
        prefill(model, mx.array(prompt, dtype=mx.uint32), kv)
        before = [mx.array(k) for k in cache.keys]
        cache.join(i, kv)
        firsts.append(kv)
        for k_before, k_after in zip(before, cache.keys):  # earlier slots kept, bit for bit
            rows = k_before.shape[0] if i else 0
            n = min(rows, i)
            assert mx.array_equal(k_before[:n, :, :16], k_after[:n, :, :16])
    assert cache.rows == [0, 1, 2] and cache.lengths == [len(p) for p in PROMPTS[:3]]
    cache.leave(0)
    assert cache.rows == [2, 1] and cache.lengths == [len(PROMPTS[2]), len(PROMPTS[1])]
    length = len(PROMPTS[2])
    assert mx.array_equal(cache.keys[0][0, :, :length], firsts[2][0].keys[0, :, :length])


@pytest.mark.parametrize("step", [512, 4])
def test_prompts_prefilled_together_continue_as_alone(model, step):
    expected = [alone(model, p, 6) for p in PROMPTS]
    shared, logits = prefill_rows(model, PROMPTS, step=step)
    cache = BatchCache(model)
    for i, prompt in enumerate(PROMPTS):
        cache.join(i, shared, i, len(prompt))
    out = [mx.argmax(logits, axis=-1)]
    for _ in range(5):
        out.append(mx.argmax(cache(out[-1].astype(mx.uint32)), axis=-1))
    assert mx.stack(out, axis=1).tolist() == expected


def test_a_row_cache_continues_like_the_original(model):
    cache = BatchCache(model)
    for i, prompt in enumerate(PROMPTS[:3]):
        kv = make_cache(model)
        prefill(model, mx.array(prompt, dtype=mx.uint32), kv)
        cache.join(i, kv)
    copy = cache.row_cache(1)
    assert copy[0].offset == len(PROMPTS[1])
    expected = alone(model, PROMPTS[1] + [77], 5)
    logits = model(mx.array([[77]]), copy)[:, -1, :]
    out = [mx.argmax(logits, axis=-1).item()]
    for _ in range(4):
        out.append(mx.argmax(model(mx.array([[out[-1]]]), copy)[:, -1, :], axis=-1).item())
    assert out == expected


def test_prefix_cache_reuses_the_longest_prefix_and_stays_bounded(model):
    prompt = PROMPTS[2]
    cache = make_cache(model)
    prefill(model, mx.array(prompt, dtype=mx.uint32), cache)
    size = sum(c.nbytes for c in cache)
    prefixes = PrefixCache(max_bytes=size)
    prefixes.store(prompt, cache)
    # A longer prompt sharing the first 10 tokens reuses exactly those.
    longer = prompt[:10] + [99, 98, 97]
    reused, partial = prefixes.lookup(longer)
    assert reused == 10 and partial[0].offset == 10
    assert prefixes.lookup(longer, min_tokens=10)[0] == 10
    assert prefixes.lookup(longer, min_tokens=11) == (0, None)  # too short to pay
    expected = alone(model, longer, 6)
    assert list(generate_tokens(model, longer[10:], cache=partial, max_tokens=6)) == expected
    # The stored entry was not written by that generation: reuse it again.
    again = prefixes.lookup(longer)[1]
    assert list(generate_tokens(model, longer[10:], cache=again, max_tokens=6)) == expected
    # The same prompt leaves its last token to run; an unrelated one finds nothing.
    assert prefixes.lookup(prompt)[0] == len(prompt) - 1
    assert prefixes.lookup([7, 7, 7]) == (0, None)
    # Over the byte bound, the least recently used entry goes.
    other = make_cache(model)
    prefill(model, mx.array(PROMPTS[0], dtype=mx.uint32), other)
    prefixes.store(PROMPTS[0], other)
    assert prefixes.nbytes <= size
    assert prefixes.lookup(longer)[0] == 1  # only BOS, shared with the entry left
    assert prefixes.lookup(PROMPTS[0] + [5])[0] == len(PROMPTS[0])


def test_a_row_joining_with_a_cached_prefix_continues_as_alone(model):
    prompt = PROMPTS[2]
    kv = make_cache(model)
    prefill(model, mx.array(prompt[:8], dtype=mx.uint32), kv)
    expected = alone(model, prompt, 6)
    reused = row(prompt, 6)
    reused.cached = 8
    other = row(PROMPTS[0], 6)
    run(BatchGenerator(model), {0: [reused, other]})
    generator = BatchGenerator(model)
    generator.join([row(PROMPTS[1], 3)])
    r = row(prompt, 6)
    r.cached = 8
    generator.join([r], [kv])
    while len(generator):
        generator.step()
    assert r.tokens == expected and reused.tokens == expected


def test_a_long_prompt_is_read_a_chunk_per_step_while_others_decode(model):
    """Chunked prefill: every step gives each running row its token while a long prompt is
    read, and the long row then continues exactly as alone (with a cached prefix too)."""
    long_prompt = [1] + [(7 * i + 3) % 500 + 2 for i in range(40)]
    expected_long = alone(model, long_prompt, 5)
    expected_short = alone(model, PROMPTS[0], 20)
    generator = BatchGenerator(model, chunk=8)
    short = row(PROMPTS[0], 20)
    generator.join([short])
    long_row = row(long_prompt, 5)
    generator.join([long_row])
    assert long_row.tokens == [] and len(generator) == 2
    steps = 0
    while not long_row.tokens:
        before = len(short.tokens)
        generator.step()
        steps += 1
        assert len(short.tokens) == before + 1  # the running row never waits
    assert steps == -(-len(long_prompt) // 8)  # one chunk of 8 per step
    while len(generator):
        generator.step()
    assert long_row.tokens == expected_long and short.tokens == expected_short
    # With no row running nobody waits: a long prompt (past its cached prefix) is read at
    # once, and gives the same tokens.
    prefix = make_cache(model)
    prefill(model, mx.array(long_prompt[:20], dtype=mx.uint32), prefix)
    cached = row(long_prompt, 5)
    cached.cached = 20
    generator.join([cached], [prefix])
    steps = 0
    while len(generator):
        generator.step()
        steps += 1
    assert cached.tokens == expected_long and steps == 1 + 4  # read at once, 4 more tokens
