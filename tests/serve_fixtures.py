"""Helpers for the server tests: a free loopback port, a live server on tiny models, and the
reference answers that `generate` gives for the same requests."""

import socket
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlx_slm.chat_format import TURN_HEADERS, Turn, conversation_ids
from mlx_slm.chooser import TokenChooser
from mlx_slm.generation import stream_text
from mlx_slm.loader import load
from tests.instruct_fixtures import make_model_dir

pytest.importorskip("starlette", reason="the `serve` extra is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(worker, timeout: float = 10.0) -> None:
    """Wait until the worker holds no request (a response can end just before its row
    leaves the batch), and for a memory snapshot after its last step."""
    deadline = time.monotonic() + timeout
    while (worker.running or worker.queue_depth) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    assert not worker.running and not worker.queue_depth


@contextmanager
def instruct_server(root: Path):
    """A live server on a tiny Instruct model (its id in `.model`)."""
    from mlx_slm.apps.serve.run import BackgroundServer

    instruct, _ = tiny_models(root)
    with BackgroundServer([instruct], port=free_port()) as running:
        running.model = instruct
        yield running


def openai_client(server):
    """The official client on `server`, failing at once rather than retrying."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def tiny_models(root: Path) -> tuple[str, str]:
    """A tiny Instruct model and a tiny base model (untied heads: their greedy text varies)."""
    return (str(make_model_dir(root / "tiny-Instruct", instruct=True)),
            str(make_model_dir(root / "tiny-base", seed=4)))


class Reference:
    """What `generate` answers, computed on its own copy of the model in this thread."""

    def __init__(self, model_dir: str):
        self.model, self.tokenizer = load(Path(model_dir))

    def completion(self, prompt: str, max_tokens: int, stop: tuple[str, ...] = (), **options):
        ids = self.tokenizer.encode(prompt)
        return self._run(ids, max_tokens, stop, **options)

    def chat(self, messages: list[dict], max_tokens: int, **options):
        system = "\n".join(m["content"] for m in messages if m["role"] == "system") or None
        turns = [Turn(m["role"], m["content"]) for m in messages if m["role"] != "system"]
        ids = conversation_ids(self.tokenizer, turns, system)
        return self._run(ids, max_tokens, TURN_HEADERS, **options)

    def _run(self, ids, max_tokens, stop, sampling=None):
        chooser = TokenChooser(sampling, ids) if sampling else None
        result = stream_text(self.model, self.tokenizer, ids, max_tokens=max_tokens,
                             stop_strings=stop, chooser=chooser)
        result.prompt_tokens = len(ids)
        return result
