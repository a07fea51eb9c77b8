"""Continuous batching gives each row exactly the tokens it gets alone, whenever it joins or
leaves; the prefix cache gives the same tokens as a fresh prefill."""

import mlx.core as mx
import pytest

from mlx_slm.batch_decode import DecodeBatch, prefill_rows
from mlx_slm.cache import make_cache
from mlx_slm.generation import generate_tokens, prefill
from mlx_slm.loader import load_model
from mlx_slm.prefix_cache import PrefixCache
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


def joined(model, prompt: list[int]) -> tuple[list, int]:
    """A prefilled batch-1 cache for `prompt` and its greedy first token."""
    cache = make_cache(model)
    logits = prefill(model, mx.array(prompt, dtype=mx.uint32), cache)
    return cache, mx.argmax(logits, axis=-1).item()


def test_rows_joining_and_leaving_match_generation_alone(model):
    lengths = [9, 4, 12, 7, 10]
    alone = [list(generate_tokens(model, p, max_tokens=n)) for p, n in zip(PROMPTS, lengths)]
    assert len({tuple(a[:4]) for a in alone}) == len(PROMPTS)  # the rows really differ
    batch = DecodeBatch(model)
    # Rows join at steps 0, 0, 2, 3 and 5, and leave after their own number of tokens.
    joins = {0: [0, 1], 2: [2], 3: [3], 5: [4]}
    rows, outputs = [], {i: [] for i in range(len(PROMPTS))}
    for step in range(30):
        for i in joins.get(step, []):
            cache, token = joined(model, PROMPTS[i])
            batch.add(cache)
            rows.append(i)
            outputs[i].append(token)
        if not rows:
            break
        done = [r for r, i in enumerate(rows) if len(outputs[i]) == lengths[i]]
        if done:
            batch.remove(done)
            rows = [i for r, i in enumerate(rows) if r not in done]
            if not rows:
                continue
        logits = batch(mx.array([outputs[i][-1] for i in rows], dtype=mx.uint32))
        for i, token in zip(rows, mx.argmax(logits, axis=-1).tolist()):
            outputs[i].append(token)
    assert [outputs[i] for i in range(len(PROMPTS))] == alone
    assert len(batch) == 0 and batch.nbytes == 0


@pytest.mark.parametrize("step", [512, 4])
def test_prompts_prefilled_together_continue_as_alone(model, step):
    alone = [list(generate_tokens(model, p, max_tokens=6)) for p in PROMPTS]
    caches, logits = prefill_rows(model, PROMPTS, step=step)
    assert [c[0].offset for c in caches] == [len(p) for p in PROMPTS]
    batch = DecodeBatch(model)
    for cache in caches:
        batch.add(cache)
    out = [mx.argmax(logits, axis=-1)]
    for _ in range(5):
        out.append(mx.argmax(batch(out[-1].astype(mx.uint32)), axis=-1))
    assert mx.stack(out, axis=1).tolist() == alone


def test_a_row_cache_continues_like_the_original(model):
    batch = DecodeBatch(model)
    for prompt in PROMPTS[:3]:
        batch.add(joined(model, prompt)[0])
    row = batch.row_cache(1)
    assert row[0].offset == len(PROMPTS[1])
    expected = list(generate_tokens(model, PROMPTS[1] + [77], max_tokens=5))
    logits = model(mx.array([[77]]), row)[:, -1, :]
    out = [mx.argmax(logits, axis=-1).item()]
    for _ in range(4):
        out.append(mx.argmax(model(mx.array([[out[-1]]]), row)[:, -1, :], axis=-1).item())
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
    expected = list(generate_tokens(model, longer, max_tokens=6))
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
