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

from mlx_slm.apps.serve import errors as worker_errors
from mlx_slm.apps.serve.metrics import Metrics
from mlx_slm.apps.serve.output import Output
from mlx_slm.apps.serve.protocol import ApiError, chat_params, completion_params, parse_body
from mlx_slm.apps.serve.worker import Worker
from mlx_slm.errors import InvalidPrompt, PromptTooLong, SlmError

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
            except (ApiError, SlmError) as err:
                err = api_error(err)
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
        return JSONResponse({"object": "list",
                             "data": [worker.model_card(name) for name in worker.models]})

    async def model(request: Request) -> Response:
        return JSONResponse(worker.model_card(worker.model_name(request.path_params["name"])))

    async def health(request: Request) -> Response:
        stats = worker.stats()
        return JSONResponse({"status": "ok", "models": stats["models"],
                             "running": stats["running"], "queued": stats["queued"]})

    async def prometheus(request: Request) -> Response:
        return PlainTextResponse(metrics.render(worker.stats()),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    async def generation(request: Request, chat: bool) -> Response:
        params = (chat_params if chat else completion_params)(parse_body(
            await _read_body(request, max_body_bytes)))
        try:
            job = worker.prepare(params, chat)
        except (PromptTooLong, InvalidPrompt) as err:
            raise api_error(err, param="messages" if chat else "prompt") from None
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                job.cancel()

        job.emit = emit
        out = Output(job, chat)
        worker.submit(job)
        metrics.count_prompt(len(job.prompt))
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
    """Await the job's events, yielding (text piece, logprob entries, finish reason | None).
    The worker ends the job (at EOS, a stop string, the grammar's end or the length)."""
    while True:
        event = await events.get()
        if event[0] == "error":
            raise api_error(event[1])
        if event[0] == "end":
            _, reason, held, out.call = event
            yield held, [], reason
            return
        _, _, piece, info = event
        metrics.count_token()
        before = len(out.logprobs)
        out.add_logprobs(info)
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
    return JSONResponse(out.whole(text, finish, worker.stats()["peak_bytes"]))


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
            yield _event(out.chunk(usage=out.usage(worker.stats()["peak_bytes"])))
        yield "data: [DONE]\n\n"
    except (ApiError, SlmError) as err:
        yield _event(api_error(err).body())
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


# Engine errors -> (status, code, OpenAI error type, field): the one place that knows HTTP
# statuses. A field of None is the caller's (the prompt or the messages).
STATUSES = [
    (worker_errors.ModelNotServed, 404, "model_not_found", "invalid_request_error", "model"),
    (worker_errors.ModelNotNamed, 400, "missing_model", "invalid_request_error", "model"),
    (worker_errors.InvalidLogitBias, 400, "invalid_value", "invalid_request_error", "logit_bias"),
    (PromptTooLong, 400, "context_length_exceeded", "invalid_request_error", None),
    (InvalidPrompt, 400, "invalid_value", "invalid_request_error", None),
    (worker_errors.ShuttingDown, 503, None, "server_error", None),
    (worker_errors.WontFit, 507, "insufficient_memory", "server_error", None),
    (worker_errors.InternalError, 500, "internal_error", "server_error", None),
    (SlmError, 400, "invalid_value", "invalid_request_error", None),
]


def api_error(err: Exception, param: str | None = None) -> ApiError:
    """An ApiError as is; an engine error with its status, code, OpenAI error type and the
    field it concerns (`param` where the error does not name one)."""
    if isinstance(err, ApiError):
        return err
    for kind, status, code, error_type, field in STATUSES:
        if isinstance(err, kind):
            return ApiError(status, str(err), param=field or param, code=code,
                            kind=error_type)
    raise err


async def _not_found(request: Request, exc) -> Response:
    error = ApiError(404, f"No route {request.method} {request.url.path}.", code="not_found")
    return JSONResponse(error.body(), status_code=404)


async def _not_allowed(request: Request, exc) -> Response:
    error = ApiError(405, f"{request.method} is not allowed on {request.url.path}.",
                     code="method_not_allowed")
    return JSONResponse(error.body(), status_code=405)
