"""response_format on the server: json_object and json_schema outputs always parse and
validate, even from a random-weight model; bad formats are a 400 naming the field."""

import json

import pytest

from tests.serve_fixtures import instruct_server, openai_client

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
httpx = pytest.importorskip("httpx")

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Sacramento", "Austin", "Albany"]},
        "rank": {"type": "integer", "minimum": 0, "maximum": 9},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["city", "rank", "tags"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Which city? Answer in JSON."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with instruct_server(tmp_path_factory.mktemp("serve-format")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai_client(server)


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                   "strict": True}}


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 1), (1.5, 2)])
def test_json_schema_answers_validate(client, server, temperature, seed):
    response = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=80, temperature=temperature,
        seed=seed, response_format=json_schema_format(SCHEMA))
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_streams_a_parsable_object(client, server):
    stream = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=120, temperature=1.0, seed=5,
        stream=True, response_format={"type": "json_object"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # ran out of tokens: reported as such, never passed off as complete
        assert finish == "length"


def test_completions_take_response_format_too(client, server):
    response = client.completions.create(
        model=server.model, prompt="JSON:", max_tokens=80, temperature=0.0,
        extra_body={"response_format": json_schema_format(SCHEMA)})
    jsonschema.validate(json.loads(response.choices[0].text), SCHEMA)


def test_a_length_limit_is_reported_as_length(client, server):
    response = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=3,
        response_format=json_schema_format(SCHEMA))
    assert response.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.choices[0].message.content)


@pytest.mark.parametrize("fmt, message", [
    ({"type": "xml"}, "response_format.type must be"),
    ({"type": "json_schema"}, "json_schema.schema must be"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}, ""),
    ("json", "'response_format' must be of type dict"),
])
def test_bad_formats_are_a_400_naming_the_field(server, fmt, message):
    body = {"model": server.model, "messages": MESSAGES, "response_format": fmt}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and message in error["message"]
    assert "\n" not in error["message"]
