"""From token ids to OpenAI response objects: text with stop strings, logprobs, usage, and
the completion / chat shapes, whole or as stream chunks."""

import time
import uuid

from mlx_slm.apps.serve.jobs import Job
from mlx_slm.apps.serve.tools import ToolText


class TextStream:
    """Token ids -> text pieces, ending at the first stop string (which is never emitted)."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer = tokenizer
        self.detokenizer = tokenizer.detokenizer()
        self.stop = stop
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.emitted = 0
        self.stopped = False

    def add(self, token: int) -> str:
        self.detokenizer.add(token)
        return self._release(final=False)

    def finish(self) -> str:
        self.detokenizer.finish()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.detokenizer.text
        hits = [i for i in (text.find(s, max(0, self.emitted - self.holdback))
                            for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            # Hold back what could be the beginning of a stop string until it is decided.
            end = len(text) if final or not self.stop else len(text) - self.holdback
        if end <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted : end], end
        return piece

    def token_text(self, token: int) -> str:
        return self.tokenizer.sp.id_to_piece(token).replace("\u2581", " ")


class Output:
    """Builds one request's response objects (chat or completion, whole or chunked)."""

    def __init__(self, job: Job, chat: bool, model: str, text: TextStream, extras: dict):
        self.job, self.chat, self.model, self.text = job, chat, model, text
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.extras = extras  # backend, BLAS, dtype: which kernels produced the figures
        self.logprobs: list[dict] = []

    def add_logprobs(self, token: int, info: dict | None) -> None:
        if info is None:
            return
        top = [(self.text.token_text(i), lp) for i, lp in info["top"]]
        self.logprobs.append({"token": self.text.token_text(token), "logprob": info["logprob"],
                              "top": top})

    def logprobs_object(self, entries: list[dict]):
        if not self.job.params.logprobs:
            return None
        if self.chat:
            return {"content": [
                {"token": e["token"], "logprob": e["logprob"],
                 "bytes": list(e["token"].encode()),
                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                  for t, lp in e["top"]]}
                for e in entries]}
        offsets, at = [], 0
        for e in entries:  # character offsets into the completion's text
            offsets.append(at)
            at += len(e["token"])
        return {"tokens": [e["token"] for e in entries],
                "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [dict(e["top"]) for e in entries],
                "text_offset": offsets}

    def usage(self, peak_bytes: int | None = None) -> dict:
        job = self.job
        timings = job.timings()
        if peak_bytes is not None:
            timings["peak_memory_gb"] = peak_bytes / 1e9
        return {
            "prompt_tokens": len(job.prompt),
            "completion_tokens": job.generated,
            "total_tokens": len(job.prompt) + job.generated,
            "prompt_tokens_details": {"cached_tokens": job.cached_tokens},
            "timings": {**timings, **self.extras},
        }

    def _choice(self, text: str, finish: str | None, entries: list[dict], delta: bool) -> dict:
        choice = {"index": 0, "logprobs": self.logprobs_object(entries), "finish_reason": finish}
        if not self.chat:
            choice["text"] = text
        elif delta:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["message"] = {"role": "assistant", "content": text}
        return choice

    def _call(self) -> dict | None:
        """The tool call the answer made (tools.ToolText holds it), if any."""
        return self.text.call() if isinstance(self.text, ToolText) else None

    def whole(self, text: str, finish: str, peak_bytes: int) -> dict:
        call = self._call()
        if isinstance(self.text, ToolText):
            text += self.text.leftover()
        choice = self._choice(text, "tool_calls" if call else finish, self.logprobs, False)
        if call:
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.usage(peak_bytes)}

    def finish_chunks(self, finish: str) -> list[dict]:
        """The stream's last chunks: a held-back call as `delta.tool_calls` (whole, in one
        piece, as OpenAI's clients accept), or held text; then the finish reason."""
        chunks, call = [], self._call()
        if call:
            chunks.append(self.chunk())
            chunks[-1]["choices"][0]["delta"] = {"tool_calls": [{"index": 0, **call}]}
            finish = "tool_calls"
        elif isinstance(self.text, ToolText) and self.text.leftover():
            chunks.append(self.chunk(self.text.leftover()))
        return chunks + [self.chunk(finish=finish)]

    def chunk(self, text: str = "", finish: str | None = None, role: bool = False,
              usage: dict | None = None, entries: list[dict] | None = None) -> dict:
        choices = [] if usage is not None else [self._choice(text, finish, entries or [], True)]
        if role:
            choices[0]["delta"] = {"role": "assistant", "content": ""}
        chunk = {"id": self.id, "created": self.created, "model": self.model,
                 "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "choices": choices}
        if usage is not None or self.job.params.include_usage:
            chunk["usage"] = usage
        return chunk
