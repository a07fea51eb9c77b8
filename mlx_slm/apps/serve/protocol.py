"""The OpenAI request bodies, checked field by field into `Params`; errors in OpenAI's shape.

Every field is checked here, before a request reaches the worker, so bad input gets a 4xx
that names the field and never touches the model.
"""

import json
from dataclasses import dataclass, replace

from mlx_slm.apps.serve import tools
from mlx_slm.apps.serve.tools import ToolError
from mlx_slm.errors import SlmError
from mlx_slm.sample import SamplingOptions, check_range


class ApiError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}

# OpenAI's defaults: temperature 1 and no repetition penalty (the CLI's are 0 and 1.2).
OPENAI_SAMPLING = SamplingOptions(temperature=1.0, repetition_penalty=1.0)


@dataclass
class Params:
    """One generation's checked parameters (the worker's input besides the prompt ids)."""

    model: str | None = None
    max_tokens: int | None = None
    sampling: SamplingOptions = OPENAI_SAMPLING
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    messages: list | None = None
    prompt: str | list[int] | None = None
    constraint: object = None  # from response_format or tools: a constrain.ConstraintSpec
    tools: object = None  # chat's tools and tool_choice: a tools.Tools, or None
    ignore_eos: bool = False  # generate past EOS (benchmarks), as vLLM's extension


MAX_STOP = 4
MAX_TOP_LOGPROBS = 20  # chat; the legacy completions endpoint allows 5


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"The request body is not valid JSON: {err}.",
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        # JSON escapes can spell lone surrogates ("\\ud800"), which no tokenizer can encode.
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as err:
        raise ApiError(400, f"The request body is not valid UTF-8: {err.reason} "
                       f"{err.object[err.start:err.end]!r}.", code="invalid_encoding") from None
    return body


def _get(body: dict, name: str, kinds, default=None, nullable: bool = True):
    value = body.get(name)
    if value is None and (nullable or name not in body):
        return default
    # JSON has no int/float distinction for whole numbers; bool is never a number.
    if isinstance(value, bool) and bool not in kinds:
        value = "bool"
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ApiError(400, f"'{name}' must be of type {names}, got {body.get(name)!r:.60}.",
                       param=name, code="invalid_type")
    return value


def _sampling(body: dict, params: Params) -> None:
    values = {}
    for name, kinds in (("temperature", (float,)), ("top_p", (float,)), ("top_k", (int,)),
                        ("min_p", (float,)), ("repetition_penalty", (float,))):
        value = _get(body, name, kinds, getattr(params.sampling, name))
        try:
            check_range(name, value)
        except SlmError as err:
            raise ApiError(400, str(err).replace(name.replace("_", "-"), name), param=name,
                           code="invalid_value") from None
        values[name] = value
    for name in ("frequency_penalty", "presence_penalty"):  # OpenAI's range
        value = _get(body, name, (float,), 0.0)
        if not -2.0 <= value <= 2.0:
            raise ApiError(400, f"{name} must be between -2 and 2, got {value}.", param=name,
                           code="invalid_value")
        values[name] = value
    values["logit_bias"] = _logit_bias(body)
    if "temperature" in body and values["temperature"] > 2.0:
        raise ApiError(400, f"temperature must be between 0 and 2, got {values['temperature']}.",
                       param="temperature", code="invalid_value")
    seed = _get(body, "seed", (int,))
    if seed is not None and not 0 <= seed < 2**64:
        raise ApiError(400, "seed must be between 0 and 2^64-1.", param="seed",
                       code="invalid_value")
    params.sampling = replace(params.sampling, **values, seed=seed)


def _logit_bias(body: dict) -> tuple[tuple[int, float], ...] | None:
    """{"token id": bias in [-100, 100]} as sorted pairs (ids are checked against the
    vocabulary once the model is known)."""
    bias = _get(body, "logit_bias", (dict,), {})
    pairs = []
    for key, value in bias.items():
        ok = isinstance(key, str) and key.isdigit() and isinstance(value, (int, float)) \
            and not isinstance(value, bool) and -100 <= value <= 100
        if not ok:
            raise ApiError(400, "logit_bias maps token ids (as strings) to numbers between -100 "
                           f"and 100, got {key!r:.20}: {value!r:.20}.", param="logit_bias",
                           code="invalid_value")
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs)) or None


# Fields of OpenAI's API that change the answer and that we do not do: refused, not ignored.
UNSUPPORTED = {"echo": lambda v: v not in (None, False), "suffix": lambda v: v is not None,
               "best_of": lambda v: v not in (None, 1)}


def _common(body: dict, params: Params) -> None:
    for name, used in UNSUPPORTED.items():
        if used(body.get(name)):
            raise ApiError(400, f"'{name}' is not supported by this server.", param=name,
                           code="unsupported_parameter")
    params.model = _get(body, "model", (str,))
    max_tokens = _get(body, "max_completion_tokens", (int,))
    max_tokens = _get(body, "max_tokens", (int,), max_tokens)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.",
                       param="max_tokens", code="invalid_value")
    params.max_tokens = max_tokens
    _sampling(body, params)
    n = _get(body, "n", (int,), 1)
    if n != 1:
        raise ApiError(400, "Only n=1 is supported.", param="n", code="invalid_value")
    stop = _get(body, "stop", (str, list), ())
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP}.",
                       param="stop", code="invalid_value")
    params.stop = stop
    params.stream = _get(body, "stream", (bool,), False)
    options = _get(body, "stream_options", (dict,), {})
    params.include_usage = _get(options, "include_usage", (bool,), False)
    params.ignore_eos = _get(body, "ignore_eos", (bool,), False)
    params.constraint = _response_format(body)
    if params.tools is not None:
        if params.constraint is not None:
            raise ApiError(400, "response_format cannot be combined with tools (unless "
                           "tool_choice is none).", param="response_format",
                           code="invalid_value")
        params.constraint = _tool_grammar(params.tools)


def _response_format(body: dict):
    """OpenAI's response_format as a checked constraint: text (none), json_object, or
    json_schema with {"json_schema": {"name", "schema", "strict"}}."""
    fmt = _get(body, "response_format", (dict,))
    kind = None if fmt is None else fmt.get("type")
    if kind in (None, "text"):
        return None
    import mlx_slm.constrain as constrain

    try:
        if kind == "json_object":
            return constrain.json_object()
        if kind == "json_schema":
            schema = fmt.get("json_schema")
            schema = schema.get("schema") if isinstance(schema, dict) else None
            if not isinstance(schema, dict):
                raise ApiError(400, "response_format.json_schema.schema must be a JSON schema "
                               "object.", param="response_format", code="invalid_value")
            return constrain.json_schema(schema)
    except SlmError as err:
        raise ApiError(400, str(err), param="response_format", code="invalid_value") from None
    raise ApiError(400, f"response_format.type must be text, json_object or json_schema, got "
                   f"{kind!r:.40}.", param="response_format", code="invalid_value")


def _top_logprobs(body: dict, name: str, most: int) -> int | None:
    top = _get(body, name, (int,))
    if top is not None and not 0 <= top <= most:
        raise ApiError(400, f"{name} must be between 0 and {most}, got {top}.", param=name,
                       code="invalid_value")
    return top


def _tools(body: dict):
    try:
        return tools.parse_tools(body.get("tools"), body.get("tool_choice"))
    except tools.ToolError as err:
        raise ApiError(400, str(err), param=err.param, code="invalid_value") from None


def _tool_grammar(tools):
    try:
        return tools.grammar()
    except SlmError as err:
        raise ApiError(400, str(err), param="tools", code="invalid_value") from None


def chat_params(body: dict) -> Params:
    """Check a /v1/chat/completions body."""
    params = Params(messages=_messages(body), tools=_tools(body))
    if params.tools is not None:  # stated after the caller's system text
        params.messages.append(("system", params.tools.system_text()))
    params.logprobs = _get(body, "logprobs", (bool,), False)
    params.top_logprobs = _top_logprobs(body, "top_logprobs", MAX_TOP_LOGPROBS) or 0
    if params.top_logprobs and not params.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs set to true.", param="top_logprobs",
                       code="invalid_value")
    _common(body, params)
    return params


def completion_params(body: dict) -> Params:
    """Check a /v1/completions body; `logprobs` there is the number of alternatives (0-5)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    ids = isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) or ids) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (or a list of token ids).",
                       param="prompt", code="invalid_value")
    params = Params(prompt=prompt)
    top = _top_logprobs(body, "logprobs", 5)
    params.logprobs, params.top_logprobs = top is not None, top or 0
    _common(body, params)
    if params.max_tokens is None:
        params.max_tokens = 16  # OpenAI's default for this endpoint
    return params


def _messages(body: dict) -> list[tuple[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages",
                       code="invalid_value")
    out, names = [], {}  # names: tool_call_id -> the function it called
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object.", param=where, code="invalid_type")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"{where}.role must be system, developer, user, assistant or "
                           f"tool, got {role!r:.40}.", param=f"{where}.role",
                           code="invalid_value")
        try:
            out.append(_message(role, message, where, names))
        except ToolError as err:
            raise ApiError(400, str(err), param=err.param, code="invalid_value") from None
    return out


def _message(role: str, message: dict, where: str, names: dict) -> tuple[str, str]:
    """One message as (role, text) in the Instruct format's roles: a tool call is written as
    the model writes one, a tool's result as a user turn (tools.py says how)."""
    content = message.get("content")
    calls = message.get("tool_calls") if role == "assistant" else None
    if calls:
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                names[call.get("id")] = call["function"].get("name")
        text = tools.history_calls(calls, f"{where}.tool_calls")
        if content is not None:
            text = _content(content, f"{where}.content") + "\n" + text
        return role, text
    text = _content(content, f"{where}.content")
    if role != "tool":
        return role, text
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise ToolError(f"{where}.tool_call_id must be the id of the call answered.",
                        f"{where}.tool_call_id")
    return "user", tools.result_text(text, call_id, names.get(call_id))


def _content(content, where: str) -> str:
    """A message's text: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}: only text parts are supported.", param=where,
                               code="invalid_value")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where} must be a string or a list of text parts.", param=where,
                   code="invalid_type")
