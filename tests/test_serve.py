"""`mlx-slm serve` through the official `openai` client: completions and chat, streaming and
not, usage and timings, stop strings, seeds, logprobs; greedy answers equal `generate`'s,
alone and in a batch of 8 concurrent requests."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from mlx_slm.apps.serve.run import BackgroundServer
from mlx_slm.sample import SamplingOptions
from tests.serve_fixtures import Reference, free_port, settle, tiny_models

openai = pytest.importorskip("openai")

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(models):
    with BackgroundServer(list(models), port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(models):
    return {name: Reference(name) for name in models}


def test_models_are_listed(client, models):
    assert sorted(m.id for m in client.models.list().data) == sorted(models)


def test_completion_equals_generate_with_usage_and_timings(client, models, reference):
    base = models[1]
    expected = reference[base].completion("The capital of France", 12)
    answer = client.completions.create(model=base, prompt="The capital of France",
                                       max_tokens=12, temperature=0)
    assert answer.choices[0].text == expected.text
    assert answer.choices[0].finish_reason == FINISH[expected.finish_reason]
    usage = answer.usage
    assert usage.prompt_tokens == expected.prompt_tokens
    assert usage.completion_tokens == len(expected.tokens)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    timings = usage.model_extra["timings"]
    assert timings["ttft_s"] >= timings["queue_s"] >= 0
    assert timings["generation_tps"] > 0 and timings["prompt_tps"] > 0
    assert timings["peak_memory_gb"] > 0 and timings["backend"] and timings["dtype"] == "float32"


def test_chat_equals_generate_chat(client, models, reference):
    instruct = models[0]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Name a river."}]
    expected = reference[instruct].chat(messages, 10)
    answer = client.chat.completions.create(model=instruct, messages=messages, max_tokens=10,
                                            temperature=0)
    assert answer.choices[0].message.content == expected.text
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage.prompt_tokens == expected.prompt_tokens


def test_streams_carry_the_same_text_and_a_usage_chunk(client, models, reference):
    instruct = models[0]
    messages = [{"role": "user", "content": "Count to three."}]
    expected = reference[instruct].chat(messages, 9)
    chunks = list(client.chat.completions.create(
        model=instruct, messages=messages, max_tokens=9, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 9
    pieces = list(client.completions.create(model=instruct, prompt="Once upon", max_tokens=7,
                                            temperature=0, stream=True))
    assert "".join(p.choices[0].text for p in pieces) == \
        reference[instruct].completion("Once upon", 7).text


def test_stop_strings_end_the_text_before_them(client, models, reference):
    base = models[1]
    full = reference[base].completion("Stop here", 16).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip() and stop in full
    answer = client.completions.create(model=base, prompt="Stop here", max_tokens=16,
                                       temperature=0, stop=[stop])
    assert answer.choices[0].text == full[: full.index(stop)]
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=base, prompt="Stop here", max_tokens=16,
                                         temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_completion_tokens_are_exact_with_a_stop_string(client, models, reference, server):
    """The row ends at its stop string in the step that completes it: usage counts the
    tokens chosen up to that one, no token decoded past it, streamed or not."""
    base = models[1]
    full = reference[base].completion("Stop here", 16)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    until = reference[base].completion("Stop here", 16, stop=(stop,))
    assert until.finish_reason == "stop" and len(until.tokens) < len(full.tokens)
    before = server.worker.tokens_generated
    answer = client.completions.create(model=base, prompt="Stop here", max_tokens=16,
                                       temperature=0, stop=[stop])
    assert answer.usage.completion_tokens == len(until.tokens)
    settle(server.worker)
    assert server.worker.tokens_generated - before == len(until.tokens)
    chunks = list(client.completions.create(
        model=base, prompt="Stop here", max_tokens=16, temperature=0, stop=[stop], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == len(until.tokens)


def test_a_seed_reproduces_its_sample_and_matches_generate(client, models, reference):
    base = models[1]

    def sample(seed):
        return client.completions.create(model=base, prompt="Tell me", max_tokens=10,
                                         temperature=1.0, seed=seed,
                                         extra_body={"top_k": 50}).choices[0].text

    first, again, other = sample(7), sample(7), sample(8)
    assert first == again and first != other
    sampling = SamplingOptions(temperature=1.0, top_k=50, repetition_penalty=1.0, seed=7)
    expected = reference[base].completion("Tell me", 10, sampling=sampling)
    assert first == expected.text


def test_logprobs_rank_the_greedy_choice_first(client, models):
    answer = client.chat.completions.create(
        model=models[0], messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        temperature=0, logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == 4
    assert "".join(entry.token for entry in content).strip() == \
        answer.choices[0].message.content.strip()
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] <= 0
        assert entry.token == entry.top_logprobs[0].token and entry.logprob == tops[0]


def test_eight_concurrent_requests_each_equal_generate(client, models, reference, server):
    base = models[1]
    prompts = [f"Request number {i} says" + " word" * i for i in range(8)]
    lengths = [24 + 3 * i for i in range(8)]
    expected = [reference[base].completion(p, n).text for p, n in zip(prompts, lengths)]
    server.worker.peak_running = 0

    def ask(i):
        return client.completions.create(model=base, prompt=prompts[i], max_tokens=lengths[i],
                                         temperature=0).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert answers == expected
    assert server.worker.peak_running >= 4  # they really decoded together


def test_a_repeated_chat_prefix_is_reused(client, models, reference):
    instruct = models[0]
    first = [{"role": "user", "content": "Tell me about rivers and lakes, please."}]
    answer = client.chat.completions.create(model=instruct, messages=first, max_tokens=6,
                                            temperature=0)
    follow = first + [{"role": "assistant", "content": answer.choices[0].message.content},
                      {"role": "user", "content": "And oceans?"}]
    second = client.chat.completions.create(model=instruct, messages=follow, max_tokens=6,
                                            temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= answer.usage.prompt_tokens
    assert second.choices[0].message.content == reference[instruct].chat(follow, 6).text


def test_completion_logprobs_in_the_legacy_shape(client, models):
    answer = client.completions.create(model=models[1], prompt="Hi", max_tokens=3,
                                       temperature=0, logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 3
    assert "".join(logprobs.tokens).strip() == answer.choices[0].text.strip()
    assert all(len(top) == 2 and max(top.values()) == lp
               for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs))
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_metrics_in_prometheus_text(client, server, models):
    import httpx

    client.completions.create(model=models[1], prompt="Count", max_tokens=5, temperature=0)
    text = httpx.get(server.url + "/metrics").text
    values = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['mlx_slm_requests_total{path="/v1/completions",status="200"}'] >= 1
    assert values["mlx_slm_generation_tokens_total"] >= 5
    assert values["mlx_slm_prompt_tokens_total"] >= 2
    assert values["mlx_slm_memory_active_bytes"] > 0
    for gauge in ("queue_depth", "running_requests", "kv_cache_bytes", "prefix_cache_bytes",
                  "generation_tokens_per_second", "memory_peak_bytes"):
        assert f"# TYPE mlx_slm_{gauge} gauge" in text and f"mlx_slm_{gauge}" in values
