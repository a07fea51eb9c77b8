"""Tool calls on the server, through the openai client: forced calls ("required", a named
function) always parse and validate, even from a random-weight model at high temperature;
"auto" gives text or a valid call; streaming reassembles to the same call; tool results
feed back; bad definitions are a 400 naming the field."""

import json

import pytest

from tests.serve_fixtures import instruct_server, openai_client

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
httpx = pytest.importorskip("httpx")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Lima", "Oslo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["c", "f"]},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                   "b": {"type": "integer", "minimum": -99, "maximum": 99}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Adds two numbers.",
                                      "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
NAMED = {"type": "function", "function": {"name": "add"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with instruct_server(tmp_path_factory.mktemp("serve-tools")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def valid_call(choice, names=("get_weather", "add")) -> tuple[str, dict]:
    """The one call of a finished choice, checked against its function's schema."""
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return call.function.name, arguments


@pytest.mark.parametrize("tool_choice", ["required", NAMED], ids=["required", "named"])
@pytest.mark.parametrize("temperature, seeds", [(0.0, [None]), (0.7, [1, 2, 3]),
                                                (1.5, [4, 5, 6])])
def test_forced_calls_always_validate(client, server, tool_choice, temperature, seeds):
    for seed in seeds:
        response = client.chat.completions.create(
            model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice,
            max_tokens=120, temperature=temperature, seed=seed)
        names = ("add",) if tool_choice == NAMED else ("get_weather", "add")
        valid_call(response.choices[0], names)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_auto_gives_text_or_a_valid_call(client, server, seed):
    response = client.chat.completions.create(
        model=server.model, messages=MESSAGES, tools=TOOLS, max_tokens=60, temperature=1.0,
        seed=seed)
    choice = response.choices[0]
    if choice.message.tool_calls:
        valid_call(choice)
    else:
        assert choice.finish_reason in ("stop", "length")
        assert not choice.message.content.startswith("<tool_call>")


def test_auto_streams_the_same_answer_as_whole(client, server):
    options = dict(model=server.model, messages=MESSAGES, tools=TOOLS, max_tokens=30,
                   temperature=1.0, seed=3)
    whole = client.chat.completions.create(**options).choices[0]
    chunks = [c for c in client.chat.completions.create(**options, stream=True) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    if whole.message.tool_calls:
        assert calls[0].function.arguments == whole.message.tool_calls[0].function.arguments
    else:
        assert text == whole.message.content and not calls
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason


def test_the_auto_grammar_allows_text_or_a_valid_call_only(server):
    from mlx_slm.apps.serve.tools import parse_tools
    from mlx_slm.constrain import Constraint

    served = next(iter(server.worker.served.values()))
    auto = Constraint(parse_tools(TOOLS, "auto").grammar(), served.vocab)
    good = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}'
    assert auto.matches("It is sunny.") and auto.matches("<tool") and auto.matches(good)
    for bad in ('<tool_call>{"name": "add", "arguments": {"a": 2}}',  # misses b
                '<tool_call>{"name": "sub", "arguments": {}}',  # no such tool
                '<tool_call>sunny', good + " and more"):
        assert not auto.matches(bad)
    forced = Constraint(parse_tools(TOOLS, "required").grammar(), served.vocab)
    assert forced.matches(good) and not forced.matches("It is sunny.")


def test_none_answers_in_text(client, server):
    response = client.chat.completions.create(
        model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=8,
        temperature=0)
    choice = response.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")


def test_a_streamed_call_reassembles_to_the_same_call(client, server):
    options = dict(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                   max_tokens=120, temperature=1.0, seed=7)
    whole = valid_call(client.chat.completions.create(**options).choices[0])
    chunks = [c for c in client.chat.completions.create(**options, stream=True) if c.choices]
    name, arguments, ids = "", "", set()
    for chunk in chunks:
        assert not chunk.choices[0].delta.content  # a call is never sent as content
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.index == 0
            ids.add(call.id)
            name += call.function.name or ""
            arguments += call.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert len(ids - {None}) == 1
    assert (name, json.loads(arguments)) == whole


def test_a_tool_result_feeds_back(client, server):
    first = client.chat.completions.create(
        model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, max_tokens=60,
        temperature=0)
    call = first.choices[0].message.tool_calls[0]
    history = MESSAGES + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ]
    second = client.chat.completions.create(
        model=server.model, messages=history, tools=TOOLS, tool_choice=NAMED, max_tokens=60,
        temperature=0)
    valid_call(second.choices[0], ("add",))
    # The call and its result are in the prompt the model saw.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


def test_tools_and_results_are_rendered_into_the_prompt(server):
    from mlx_slm.apps.serve.protocol import chat_params

    params = chat_params({"messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ], "tools": TOOLS})
    roles = [role for role, _ in params.messages]
    assert roles == ["system", "user", "assistant", "user", "system"]
    assert params.messages[2][1] == '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}'
    assert params.messages[3][1] == '<tool_result>{"tool_call_id": "call_1", "name": "add"}\n5'
    assert '"name": "get_weather"' in params.messages[4][1]


def function(name="f", parameters=None) -> dict:
    spec = {"name": name} if parameters is None else {"name": name, "parameters": parameters}
    return {"type": "function", "function": spec}


@pytest.mark.parametrize("extra, param", [
    ({"tools": "get_weather"}, "tools"),
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [function("bad name!")]}, "tools[0].function.name"),
    ({"tools": [function(parameters={"type": "nonsense"})]}, "tools[0].function.parameters"),
    ({"tools": [function(parameters="{}")]}, "tools[0].function.parameters"),
    ({"tools": [function("f"), function("f")]}, "tools[1].function.name"),
    ({"tools": [function()], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [function()], "tool_choice": {"type": "function", "function": {"name": "g"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [function()], "response_format": {"type": "json_object"}}, "response_format"),
    ({"messages": [{"role": "tool", "content": "5"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_definitions_are_a_400_naming_the_field(server, extra, param):
    body = {"model": server.model, "messages": MESSAGES, **extra}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "\n" not in error["message"], error


def test_stop_strings_end_text_but_never_cut_a_call(server):
    from mlx_slm.apps.serve.tools import ToolText
    from mlx_slm.tokenizer import TextStream

    tokenizer = next(iter(server.worker.served.values())).loaded.tokenizer

    def run(text):
        stream = ToolText(TextStream(tokenizer, ("<|user|>",)))
        shown = "".join(stream.add(t) for t in tokenizer.encode(text, bos=False))
        return shown + ("" if stream.stopped else stream.finish()), stream.call()

    assert run("Sunny.<|user|> more") == ("Sunny.", None)
    assert run("<tool") == ("<tool", None)
    shown, call = run('<tool_call>{"name": "f", "arguments": {"a": "<|user|>"}}')
    assert shown == "" and json.loads(call["function"]["arguments"]) == {"a": "<|user|>"}
