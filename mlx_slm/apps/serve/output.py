"""From a job's events to OpenAI response objects: logprobs, usage, and the completion /
chat shapes, whole or as stream chunks."""

import time
import uuid

from mlx_slm.apps.serve.jobs import Job


class Output:
    """Builds one request's response objects (chat or completion, whole or chunked)."""

    def __init__(self, job: Job, chat: bool):
        self.job, self.chat, self.model = job, chat, job.model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.extras = job.report  # backend, BLAS, dtype: which kernels produced the figures
        self.logprobs: list[dict] = []
        self.call: dict | None = None  # the tool call the answer made, given with its end

    def add_logprobs(self, info: dict | None) -> None:
        if info is not None:
            self.logprobs.append(info)

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

    def whole(self, text: str, finish: str, peak_bytes: int) -> dict:
        call = self.call
        choice = self._choice(text, "tool_calls" if call else finish, self.logprobs, False)
        if call:
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice],
                "usage": self.usage(peak_bytes)}

    def finish_chunks(self, finish: str) -> list[dict]:
        """The stream's last chunks: a held-back call as `delta.tool_calls` (whole, in one
        piece, as OpenAI's clients accept), then the finish reason."""
        chunks, call = [], self.call
        if call:
            chunks.append(self.chunk())
            chunks[-1]["choices"][0]["delta"] = {"tool_calls": [{"index": 0, **call}]}
            finish = "tool_calls"
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
