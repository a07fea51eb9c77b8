"""Many clients at once: a bounded load test (mixed lengths, streaming or not, some cancelled
midway) where every answer equals `generate`'s; a client that leaves frees its slot; SIGTERM
lets in-flight requests finish before the process exits."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mlx_slm.apps.serve.run import BackgroundServer
from tests.serve_fixtures import Reference, free_port, settle, tiny_models

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

PROMPTS = ["Hi", "The river", "Once upon a time there was", "A list: one, two, three, four,",
           "Why is the sky blue? Explain it simply and in detail, step by step, please."]
LENGTHS = [3, 8, 14]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("serve-load"))[0]


@pytest.fixture(scope="module")
def server(model):
    with BackgroundServer([model], port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_sixteen_clients_get_complete_correct_answers(server, client, model):
    reference = Reference(model)
    # A greedy answer of n tokens is the first n tokens of a longer one.
    longest = {p: reference.completion(p, max(LENGTHS)).tokens for p in PROMPTS}
    expected = {(p, n): reference.tokenizer.decode(longest[p][:n])
                for p in PROMPTS for n in LENGTHS}
    chat = [{"role": "user", "content": PROMPTS[2]}]
    expected_chat = reference.chat(chat, 8).text
    worker = server.worker
    settle(worker)
    memory_before = worker.memory["active_bytes"] - worker.prefix_bytes

    def one_client(c: int) -> list[str]:
        problems = []
        for r in range(5):
            prompt, n = PROMPTS[(c + r) % len(PROMPTS)], LENGTHS[(c * 5 + r) % len(LENGTHS)]
            kind = (c + 2 * r) % 4
            if kind == 0:
                text = client.completions.create(model=model, prompt=prompt, max_tokens=n,
                                                 temperature=0).choices[0].text
            elif kind == 1:
                stream = client.completions.create(model=model, prompt=prompt, max_tokens=n,
                                                   temperature=0, stream=True)
                text = "".join(chunk.choices[0].text for chunk in stream)
            elif kind == 2:  # leaves after two chunks
                stream = client.completions.create(model=model, prompt=prompt, max_tokens=40,
                                                   temperature=0, stream=True)
                for i, _ in enumerate(stream):
                    if i == 1:
                        break
                stream.close()
                continue
            else:
                answer = client.chat.completions.create(model=model, messages=chat,
                                                        max_tokens=8, temperature=0)
                text = answer.choices[0].message.content
                prompt, n = "chat", 8
            want = expected_chat if prompt == "chat" else expected[(prompt, n)]
            if text != want:
                problems.append(f"client {c} request {r}: {text!r} != {want!r}")
        return problems

    worker.peak_running = 0
    with ThreadPoolExecutor(16) as pool:
        problems = [p for found in pool.map(one_client, range(16)) for p in found]
    assert problems == []
    assert worker.peak_running >= 4
    settle(worker)
    assert worker.kv_bytes == 0
    # Memory is flat: what is left beyond the start is the (bounded) prefix cache.
    assert worker.memory["active_bytes"] - worker.prefix_bytes <= memory_before + 2**20


def test_a_client_that_leaves_frees_its_slot_at_once(server, client, model):
    worker = server.worker
    settle(worker)
    before = worker.tokens_generated
    stream = client.completions.create(model=model, prompt="Go on", max_tokens=1500, temperature=0,
                                       stream=True)
    next(iter(stream))
    stream.close()
    settle(worker, timeout=5)
    assert worker.tokens_generated - before < 500
    # A non-streaming client that gives up is dropped too.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", timeout=0.3,
                   json={"model": model, "prompt": "Go on", "max_tokens": 1500, "temperature": 0})
    settle(worker, timeout=5)
    assert worker.tokens_generated - before < 1000


def test_sigterm_drains_in_flight_requests_then_exits(model):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "mlx_slm", "serve", "--model", model,
                                "--port", str(port)], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        lines, first = [], threading.Event()

        def stream():
            body = {"prompt": "Drain me", "max_tokens": 60, "temperature": 0, "stream": True}
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        lines.append(line)
                        first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(30)
        process.send_signal(signal.SIGTERM)
        reader.join(60)
        # uvicorn re-raises the signal once drained: the status says "ended by SIGTERM".
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for c in chunks if c["choices"][0]["text"]) >= 50


def test_a_running_stream_keeps_its_pace_while_a_long_prompt_is_admitted(server, client, model):
    """Chunked prefill: a 2,000-token prompt is read a chunk per step, between the running
    stream's decode steps, so that stream goes on producing tokens all the while."""
    reference = Reference(model)
    n = 120
    assert len(reference.completion("Hi", n).tokens) == n  # no EOS: the stream runs on
    arrivals, long_window = [], {}
    started = threading.Event()

    def stream():
        for chunk in client.completions.create(model=model, prompt="Hi", max_tokens=n,
                                               temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].text:
                arrivals.append(time.perf_counter())
                if len(arrivals) == 5:
                    started.set()

    def long_request():
        started.wait(30)
        prompt = " ".join(f"w{i % 97}" for i in range(690))  # about 2,000 tokens
        long_window["sent"] = time.perf_counter()
        answer = client.completions.create(model=model, prompt=prompt, max_tokens=2,
                                           temperature=0)
        long_window["done"] = time.perf_counter()
        long_window["prompt_tokens"] = answer.usage.prompt_tokens

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(stream), pool.submit(long_request)]:
            future.result(timeout=120)
    assert 1800 < long_window["prompt_tokens"] < 2040
    during = [t for t in arrivals if long_window["sent"] < t < long_window["done"]]
    # 2,000 tokens in chunks of 256: the stream gets a token between every two chunks.
    assert len(during) >= 6, (len(during), long_window)
    settle(server.worker)
