"""Issue 23's server items: text that is not UTF-8, a missing `model` with several models,
OpenAI's penalties and logit_bias, refused fields, GET /v1/models/{id}, the developer role,
start-up messages and options, and no empty chunk before a stream's end."""

import json
import subprocess
import sys

import pytest

from mlx_slm.apps.serve.run import BackgroundServer, startup_lines
from tests.serve_fixtures import free_port, settle, tiny_models

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("serve-requests"))


@pytest.fixture(scope="module")
def server(models):
    with BackgroundServer(list(models), port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_a_lone_surrogate_is_a_400_not_utf8(http, models):
    # JSON's escapes can spell a lone surrogate (json.dumps writes "\\ud800").
    body = {"model": models[0], "messages": [{"role": "user", "content": "\ud800 x"}]}
    error = error_of(http.post(CHAT, content=json.dumps(body)), 400)
    assert "not valid UTF-8" in error["message"]
    body = {"model": models[1], "prompt": "a\udfff"}
    completion = http.post("/v1/completions", content=json.dumps(body))
    assert "not valid UTF-8" in error_of(completion, 400)["message"]


def test_a_missing_model_with_several_served_names_the_field_and_the_ids(http, models):
    error = error_of(http.post(CHAT, json={"messages": [{"role": "user", "content": "Hi"}]}),
                     400)
    assert error["param"] == "model" and all(m in error["message"] for m in models)


def test_one_model_is_retrieved_by_id(http, models):
    answer = http.get("/v1/models/" + models[1])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"id": models[1], "object": "model", "created": 0,
                             "owned_by": "mlx-slm"}
    assert error_of(http.get("/v1/models/no-such-model"), 404)["code"] == "model_not_found"


@pytest.mark.parametrize("field, value", [("echo", True), ("suffix", "end"), ("best_of", 2)])
def test_fields_we_do_not_do_are_refused(http, models, field, value):
    body = {"model": models[1], "prompt": "Hi", "max_tokens": 2, field: value}
    assert error_of(http.post("/v1/completions", json=body), 400)["param"] == field


@pytest.mark.parametrize("field, value", [("frequency_penalty", 2.5),
                                          ("presence_penalty", -3),
                                          ("logit_bias", {"5": 101}),
                                          ("logit_bias", {"x": 1}),
                                          ("logit_bias", {"99999999": 1})])
def test_penalty_and_bias_ranges(http, models, field, value):
    body = {"model": models[1], "prompt": "Hi", "max_tokens": 2, field: value}
    assert error_of(http.post("/v1/completions", json=body), 400)["param"] == field


def test_logit_bias_forces_and_forbids_tokens(client, server, models):
    tokenizer = server.worker.served[models[1]].loaded.tokenizer

    def tokens(**extra):
        answer = client.completions.create(model=models[1], prompt="Once", max_tokens=6,
                                           temperature=0, logprobs=0, **extra)
        return answer.choices[0].logprobs.tokens

    plain = tokens()
    assert set(tokens(logit_bias={"450": 100})) == {" The"}  # id 450 is "▁The"
    first = tokenizer.sp.piece_to_id(plain[0].replace(" ", "\u2581"))
    assert tokens(logit_bias={str(first): -100})[0] != plain[0]


def test_presence_and_frequency_penalties_change_greedy_text(client, models):
    def tokens(**extra):
        answer = client.completions.create(model=models[1], prompt="Once upon a time",
                                           max_tokens=24, temperature=0, logprobs=0, **extra)
        return answer.choices[0].logprobs.tokens

    plain = tokens()
    assert len(set(plain)) < len(plain)  # the tiny model repeats itself
    presence = tokens(presence_penalty=2.0)
    frequency = tokens(frequency_penalty=2.0)
    assert presence != plain and frequency != plain
    assert len(set(presence)) > len(set(plain))


def test_occurrence_penalty_and_logit_bias_by_hand():
    import mlx.core as mx

    from mlx_slm.sample import SamplingOptions, make_logit_bias, make_occurrence_penalty

    logits = mx.zeros((1, 5))
    history = mx.array([4, 1, 1, 3], dtype=mx.uint32)  # prompt [4], generated [1, 1, 3]
    out = make_occurrence_penalty(0.5, 0.25, start=1)(history, logits)
    assert out.tolist() == [[0.0, -1.25, 0.0, -0.75, 0.0]]  # 4 is in the prompt: free
    biased = make_logit_bias(((0, -100.0), (2, 3.0)))(history, mx.zeros((1, 5)))
    assert biased.tolist() == [[-100.0, 0.0, 3.0, 0.0, 0.0]]
    # The defaults add nothing: the CLI's options give the processors they gave before.
    assert len(SamplingOptions().logits_processors(7)) == 1
    assert SamplingOptions(repetition_penalty=1.0).logits_processors() == []


def test_developer_is_system(http, models):
    def prompt_tokens(role):
        body = {"model": models[0], "max_tokens": 1, "messages": [
            {"role": role, "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
        return http.post(CHAT, json=body).json()["usage"]["prompt_tokens"]

    assert prompt_tokens("developer") == prompt_tokens("system")


def test_a_streamed_completion_sends_no_empty_chunk(http, models):
    body = {"model": models[1], "prompt": "Hi", "max_tokens": 4, "stream": True,
            "temperature": 0}
    with http.stream("POST", "/v1/completions", json=body) as response:
        chunks = [line for line in response.iter_lines() if line.startswith("data: {")]
    choices = [json.loads(c[6:])["choices"][0] for c in chunks]
    assert choices[-1]["finish_reason"] == "length"
    assert all(c["text"] for c in choices[:-1]), choices


def test_startup_names_the_models_and_url_and_warns_when_open():
    lines = startup_lines(["m1", "m2"], "127.0.0.1", 8080, None)
    assert lines == ["Serving m1, m2 at http://127.0.0.1:8080/v1"]
    assert len(startup_lines(["m"], "localhost", 1, None)) == 1
    assert len(startup_lines(["m"], "::1", 1, None)) == 1
    assert "Warning" in startup_lines(["m"], "0.0.0.0", 1, None)[-1]
    assert len(startup_lines(["m"], "0.0.0.0", 1, "key")) == 1


def test_serve_options_port_help_and_an_empty_key():
    helped = subprocess.run([sys.executable, "-m", "mlx_slm", "serve", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert "TCP port" in helped.stdout
    empty = subprocess.run([sys.executable, "-m", "mlx_slm", "serve", "--api-key", ""],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and "--api-key" in empty.stderr


def test_metrics_break_down_the_worker_time(client, http, server, models):
    def scrape() -> dict:
        return {name: float(value) for name, value in
                (line.rsplit(" ", 1) for line in http.get("/metrics").text.splitlines()
                 if line.startswith(("mlx_slm_worker_seconds", "mlx_slm_decode_steps")))}

    before = scrape()
    client.completions.create(model=models[1], prompt="Count", max_tokens=5, temperature=0)
    settle(server.worker)  # the row leaves the batch just after its answer is sent
    after = scrape()
    assert after["mlx_slm_decode_steps_total"] - before["mlx_slm_decode_steps_total"] >= 4
    for phase in ("admission", "decode", "emit", "copies"):
        key = f'mlx_slm_worker_seconds_total{{phase="{phase}"}}'
        assert after[key] > before[key], phase
