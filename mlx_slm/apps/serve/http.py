"""The HTTP side: Starlette routes that check a request, hand a Job to the worker and turn
its events into an OpenAI response, whole or as server-sent events."""

import asyncio
import hmac
import json
import sys
import traceback

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from mlx_slm.apps.serve.jobs import Job
from mlx_slm.apps.serve.metrics import Metrics
from mlx_slm.apps.serve.output import Output, TextStream
from mlx_slm.apps.serve.protocol import (
    ApiError,
    Params,
    chat_params,
    completion_params,
    parse_body,
)
from mlx_slm.apps.serve.tools import ToolText
from mlx_slm.apps.serve.worker import Worker
from mlx_slm.chat_format import TURN_HEADERS, Turn, conversation_ids

MAX_BODY_BYTES = 4 * 2**20


def make_app(worker: Worker, api_key: str | None = None,
             max_body_bytes: int = MAX_BODY_BYTES) -> Starlette:
    """The ASGI app serving `worker`'s models; `api_key` requires `Authorization: Bearer`."""
    metrics = Metrics()

    def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise ApiError(401, "Missing or incorrect API key (Authorization: Bearer KEY).",
                           code="invalid_api_key")

    def endpoint(handler, counted: bool = True):
        async def wrapped(request: Request) -> Response:
            try:
                if counted:
                    authorized(request)
                response = await handler(request)
            except ApiError as err:
                response = JSONResponse(err.body(), status_code=err.status)
            except Exception as err:  # noqa: BLE001  (one request's failure never stops the server)
                traceback.print_exc(file=sys.stderr)
                error = ApiError(500, f"Internal error: {type(err).__name__}", kind="server_error",
                                 code="internal_error")
                response = JSONResponse(error.body(), status_code=500)
            metrics.count_request(request.url.path, response.status_code)
            return response

        return wrapped

    async def models(request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "mlx-slm"}
                for name in worker.served]
        return JSONResponse({"object": "list", "data": data})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in worker.served:
            raise ApiError(404, f"The model {name!r} is not served here; GET /v1/models lists "
                           "them.", param="model", code="model_not_found")
        return JSONResponse({"id": name, "object": "model", "created": 0, "owned_by": "mlx-slm"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(worker.served),
                             "running": worker.running, "queued": worker.queue_depth})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(worker),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def generation(request: Request, chat: bool) -> Response:
        params = (chat_params if chat else completion_params)(parse_body(
            await _read_body(request, max_body_bytes)))
        name = _model_name(worker, params.model)
        served = worker.served[name]
        tokenizer = served.loaded.tokenizer
        prompt = _prompt_ids(tokenizer, params, chat)
        _check_ids(tokenizer, [i for i, _ in params.sampling.logit_bias or ()], "logit_bias")
        context = served.loaded.model.args.max_context_length
        if len(prompt) >= context:
            raise ApiError(400, f"The prompt has {len(prompt)} tokens but the model's context is "
                           f"{context}.", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        max_tokens = min(params.max_tokens or context, context - len(prompt))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                job.cancel()

        job = Job(name, prompt, params, max_tokens, emit,
                  stop_ids=() if params.ignore_eos else (tokenizer.eos_id,))
        stop = params.stop + (TURN_HEADERS if chat else ())
        if params.tools is not None and params.tools.forced:
            stop = ()  # the grammar ends a call; a stop string could only cut it
        text = TextStream(tokenizer, stop)
        out = Output(job, chat, name, ToolText(text) if params.tools else text, served.report)
        worker.submit(job)
        metrics.count_prompt(len(prompt))
        if params.stream:
            return StreamingResponse(_sse(out, events, worker, metrics),
                                     media_type="text/event-stream")
        return await _whole(request, out, events, worker, metrics)

    async def completions(request: Request) -> Response:
        return await generation(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await generation(request, chat=True)

    routes = [
        Route("/v1/models", endpoint(models), methods=["GET"]),
        Route("/v1/models/{name:path}", endpoint(model), methods=["GET"]),
        Route("/health", endpoint(health, counted=False), methods=["GET"]),
        Route("/metrics", endpoint(prometheus), methods=["GET"]),
        Route("/v1/completions", endpoint(completions), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(chat_completions), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _not_allowed})


async def _next(events: asyncio.Queue, out: Output, metrics: Metrics):
    """Await the job's events, yielding (text piece, logprob entries, finish reason | None)."""
    while True:
        event = await events.get()
        if event[0] == "error":
            raise event[1]
        if event[0] == "end":
            piece = out.text.finish() if not out.text.stopped else ""
            yield piece, [], "stop" if out.text.stopped else event[1]
            return
        _, token, info = event
        metrics.count_token()
        before = len(out.logprobs)
        piece = out.text.add(token)
        out.add_logprobs(token, info)
        if out.text.stopped:
            out.job.cancel()
            yield piece, out.logprobs[before:], "stop"
            return
        yield piece, out.logprobs[before:], None


async def _whole(request: Request, out: Output, events, worker: Worker, metrics) -> Response:
    async def collect():
        text, reason = [], None
        async for piece, _, finish in _next(events, out, metrics):
            text.append(piece)
            reason = finish
        return "".join(text), reason

    # A client that leaves before the answer frees its slot at once.
    collecting = asyncio.ensure_future(collect())
    leaving = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait([collecting, leaving], return_when=asyncio.FIRST_COMPLETED)
    finally:
        leaving.cancel()
        if not collecting.done():
            out.job.cancel()
            collecting.cancel()
    if not collecting.done() or collecting.cancelled():
        return Response(status_code=499)
    text, finish = collecting.result()
    return JSONResponse(out.whole(text, finish, worker.memory["peak_bytes"]))


async def _sse(out: Output, events, worker: Worker, metrics):
    """Server-sent events: chunks, an optional usage chunk, then [DONE]."""
    try:
        if out.chat:
            yield _event(out.chunk(role=True))
        async for piece, entries, finish in _next(events, out, metrics):
            if piece or entries:
                yield _event(out.chunk(piece, entries=entries))
            if finish:
                for chunk in out.finish_chunks(finish):
                    yield _event(chunk)
        if out.job.params.include_usage:
            yield _event(out.chunk(usage=out.usage(worker.memory["peak_bytes"])))
        yield "data: [DONE]\n\n"
    except ApiError as err:
        yield _event(err.body())
    finally:
        out.job.cancel()  # a no-op once done; frees the slot of a client that went away


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body exceeds {limit} bytes.", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"The request body exceeds {limit} bytes.", code="body_too_large")
    return bytes(body)


def _model_name(worker: Worker, requested: str | None) -> str:
    if requested is None and len(worker.served) == 1:
        return next(iter(worker.served))
    if requested is None:
        raise ApiError(400, "'model' is required when several models are served: "
                       f"{', '.join(worker.served)}.", param="model", code="missing_model")
    if requested in worker.served:
        return requested
    raise ApiError(404, f"The model {requested!r} is not served here; GET /v1/models lists "
                   "them.", param="model", code="model_not_found")


def _prompt_ids(tokenizer, params: Params, chat: bool) -> list[int]:
    """The chat format at token level (as `generate --chat`), or the plain prompt."""
    if chat:
        system = "\n".join(c for role, c in params.messages if role == "system") or None
        turns = [Turn(role, c) for role, c in params.messages if role != "system"]
        return conversation_ids(tokenizer, turns, system)
    if isinstance(params.prompt, str):
        return tokenizer.encode(params.prompt)
    _check_ids(tokenizer, params.prompt, "prompt")
    return list(params.prompt)


def _check_ids(tokenizer, ids: list[int], param: str) -> None:
    if not all(0 <= t < tokenizer.vocab_size for t in ids):
        raise ApiError(400, f"Token ids must be between 0 and {tokenizer.vocab_size - 1}.",
                       param=param, code="invalid_value")


async def _not_found(request: Request, exc) -> Response:
    error = ApiError(404, f"No route {request.method} {request.url.path}.", code="not_found")
    return JSONResponse(error.body(), status_code=404)


async def _not_allowed(request: Request, exc) -> Response:
    error = ApiError(405, f"{request.method} is not allowed on {request.url.path}.",
                     code="method_not_allowed")
    return JSONResponse(error.body(), status_code=405)
