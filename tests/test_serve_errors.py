"""Bad input never hurts the server: each gets a 4xx with an OpenAI error object, an internal
error a 500, and the server keeps serving. Auth on and off; the missing-extra hint."""

import json

import pytest

from mlx_slm.apps.serve.run import BackgroundServer
from tests.serve_fixtures import free_port, settle, tiny_models

httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.mktemp("serve-errors"))


@pytest.fixture(scope="module")
def server(models):
    with BackgroundServer([models[0]], port=free_port()) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def still_serving(http) -> None:
    answer = http.post(CHAT, json={"messages": MESSAGES, "max_tokens": 2})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("body, param", [
    ({"messages": "hello"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": MESSAGES, "max_tokens": "ten"}, "max_tokens"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": MESSAGES, "temperature": -1}, "temperature"),
    ({"messages": MESSAGES, "temperature": True}, "temperature"),
    ({"messages": MESSAGES, "top_p": 1.5}, "top_p"),
    ({"messages": MESSAGES, "top_k": -2}, "top_k"),
    ({"messages": MESSAGES, "min_p": 2}, "min_p"),
    ({"messages": MESSAGES, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": MESSAGES, "seed": -1}, "seed"),
    ({"messages": MESSAGES, "n": 2}, "n"),
    ({"messages": MESSAGES, "stop": [1, 2]}, "stop"),
    ({"messages": MESSAGES, "stream": "yes"}, "stream"),
    ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
])
def test_wrong_fields_are_named_in_a_400(http, body, param):
    assert error_of(http.post(CHAT, json=body), 400)["param"] == param


def test_malformed_and_misplaced_requests(http):
    assert error_of(http.post(CHAT, content=b"{not json"), 400)["code"] == "invalid_json"
    assert error_of(http.post(CHAT, content=b"[1, 2]"), 400)["code"] == "invalid_json"
    assert error_of(http.post(CHAT, content=b"\xff\xfe"), 400)["code"] == "invalid_json"
    unknown = http.post(CHAT, json={"model": "no-such-model", "messages": MESSAGES})
    assert error_of(unknown, 404)["code"] == "model_not_found"
    assert error_of(http.post("/v1/completions", json={"prompt": 5}), 400)["param"] == "prompt"
    assert error_of(http.post("/v1/completions", json={"prompt": [1, 99999999]}), 400)
    assert error_of(http.get("/v1/nothing"), 404)
    assert error_of(http.get(CHAT), 405)
    still_serving(http)


def test_a_prompt_past_the_context_and_an_oversized_body(http):
    long = http.post("/v1/completions", json={"prompt": "word " * 2100, "max_tokens": 2})
    assert error_of(long, 400)["code"] == "context_length_exceeded"
    huge = http.post(CHAT, content=json.dumps({"messages": MESSAGES, "pad": "x" * 5_000_000}))
    assert error_of(huge, 413)["code"] == "body_too_large"
    still_serving(http)


def test_an_internal_error_is_a_500_and_the_server_keeps_serving(http, server, monkeypatch):
    served = next(iter(server.worker.served.values()))

    def broken(tokens):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(type(served.generator.cache), "__call__",
                        lambda self, tokens: broken(tokens))
    error = error_of(http.post(CHAT, json={"messages": MESSAGES, "max_tokens": 4}), 500)
    assert error["type"] == "server_error" and "injected fault" in error["message"]
    monkeypatch.undo()
    still_serving(http)
    settle(server.worker)


def test_a_batch_that_would_not_fit_waits_and_a_request_that_never_fits_is_refused(models):
    from concurrent.futures import ThreadPoolExecutor

    from mlx_slm.apps.serve.worker import Settings

    # Room for one request of 40 positions at a time (the tiny model: 640 bytes a position).
    settings = Settings(kv_budget_bytes=50 * 640, prefix_cache_bytes=0)
    with BackgroundServer([models[1]], port=free_port(), settings=settings) as small, \
            httpx.Client(base_url=small.url, timeout=60) as client:
        assert small.worker.served[models[1]].token_bytes == 640
        error = error_of(client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 60}),
                         507)
        assert error["code"] == "insufficient_memory"

        def ask(_):
            return client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 30})

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(ask, range(3)))
        assert [a.json()["usage"]["completion_tokens"] for a in answers] == [30] * 3
        assert small.worker.peak_running == 1


def test_auth_on_and_off(models, http):
    assert http.get("/v1/models").status_code == 200  # no key set: open
    with BackgroundServer([models[1]], port=free_port(), api_key="s3cret") as locked, \
            httpx.Client(base_url=locked.url, timeout=30) as client:
        assert error_of(client.get("/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        assert error_of(client.post(CHAT, json={"messages": MESSAGES}, headers=wrong), 401)
        right = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=right).status_code == 200
        answer = client.post(CHAT, json={"messages": MESSAGES, "max_tokens": 2}, headers=right)
        assert answer.status_code == 200
        assert client.get("/health").status_code == 200  # liveness stays open
        assert client.get("/metrics", headers=right).status_code == 200


def test_a_model_that_cannot_load_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mlx_slm", "serve", "--model",
                           str(tmp_path / "missing"), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'missing'} is neither a model directory nor a Hub repo id "
        "(owner/name)."]


def test_a_port_in_use_is_a_one_line_error():
    import socket

    from mlx_slm.apps.serve.run import check_address
    from mlx_slm.errors import SlmError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SlmError, match=f"Cannot listen on 127.0.0.1:{port}: .*in use"):
            check_address("127.0.0.1", port)
    check_address("127.0.0.1", port)  # free again


def test_a_missing_extra_gives_the_install_hint(monkeypatch):
    import sys

    from mlx_slm.apps.serve.run import require_extra
    from mlx_slm.errors import SlmError

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    with pytest.raises(SlmError, match=r"pip install 'mlx-slm\[serve\]'"):
        require_extra()
