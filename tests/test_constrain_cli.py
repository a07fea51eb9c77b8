"""Structured output through the CLI: `generate`, `chat` and `quiz` with constraint options."""

import json
import re

import jsonschema
import pytest
from click.testing import CliRunner

from mlx_slm.apps.quiz import builtin_questions, candidates
from mlx_slm.commands.cli import main
from tests.instruct_fixtures import make_model_dir

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "population": {"type": "integer", "minimum": 0, "maximum": 10000000},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
    "additionalProperties": False,
}
CITIES = ("Sacramento", "Los Angeles", "San Diego")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("constrained")
    return (make_model_dir(root / "tiny-Instruct", instruct=True),
            make_model_dir(root / "tiny-base", seed=4))


def invoke(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def generate_json(model, *args):
    result = invoke("generate", "-m", model, "-p", "A city:", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_generate_json_schema_inline_and_from_a_file(models, tmp_path):
    schema_file = tmp_path / "city.json"
    schema_file.write_text(json.dumps(SCHEMA))
    for model in models:
        inline = generate_json(model, "--json-schema", json.dumps(SCHEMA), "--temp", "0.8",
                               "--seed", "3")
        from_file = generate_json(model, "--json-schema", schema_file, "--temp", "0.8",
                                  "--seed", "3")
        assert inline["tokens"] == from_file["tokens"]
        assert inline["finish_reason"] == "eos"
        assert inline["constraint"] == {"type": "json_schema", "value": SCHEMA, "valid": True}
        jsonschema.validate(json.loads(inline["text"]), SCHEMA)


def test_generate_json_object_regex_and_choice(models):
    instruct, base = models
    report = generate_json(base, "--regex", r"[0-9]{2}:[0-9]{2}")
    assert re.fullmatch(r"[0-9]{2}:[0-9]{2}", report["text"])
    assert report["constraint"]["type"] == "regex" and report["constraint"]["valid"]
    for model in models:
        report = generate_json(model, *[a for c in CITIES for a in ("--choice", c)])
        assert report["text"] in CITIES and report["finish_reason"] == "eos"
    report = generate_json(instruct, "--json-object", "-n", "400")
    if report["finish_reason"] == "eos":
        assert isinstance(json.loads(report["text"]), dict)
    assert report["constraint"] == {"type": "json_object", "value": None,
                                    "valid": report["finish_reason"] == "eos"}


def test_generate_streams_the_constrained_text(models):
    result = invoke("generate", "-m", models[1], "-p", "Capital?", "--choice", "Sacramento")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Sacramento\n"


def test_unconstrained_report_has_a_null_constraint(models):
    assert generate_json(models[1], "-n", "2")["constraint"] is None


def test_length_limit_is_flagged(models):
    report = generate_json(models[0], "--json-schema", json.dumps(SCHEMA), "-n", "3")
    assert report["finish_reason"] == "length" and report["constraint"]["valid"] is False
    result = invoke("generate", "-m", models[0], "--json-schema", json.dumps(SCHEMA), "-n", "3")
    assert result.exit_code == 0
    assert ("[the output does not satisfy the json_schema constraint: it hit --max-tokens]"
            in result.stderr)


@pytest.mark.parametrize("args, message", [
    (["--regex", "(a"], "Error: Invalid regular expression '(a': unclosed group\n"),
    (["--json-schema", '{"type": "objec"}'], "Error: Invalid JSON schema: Invalid type: objec\n"),
    (["--json-schema", "missing.json"],
     "Error: --json-schema 'missing.json' is neither a file nor a JSON object.\n"),
    (["--json-object", "--choice", "a"],
     "Error: --json-object and --choice cannot be combined; give one constraint.\n"),
    (["--choice", ""], "Error: Each choice must be a non-empty string, and at least one is "
                       "needed.\n"),
])
def test_bad_constraints_fail_before_the_model_loads(tmp_path, args, message):
    # The model path does not exist: the constraint's error comes first.
    result = invoke("generate", "-m", tmp_path / "no-model", *args)
    assert result.exit_code == 1
    assert result.stderr == message


def test_chat_answers_obey_the_constraint(models):
    result = invoke("chat", "-m", models[0], "-n", "100", "--json-schema", json.dumps(SCHEMA),
                    input="Describe a city.\nAnother one.\n")
    assert result.exit_code == 0, result.output
    answers = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == 2
    for answer in answers:
        jsonschema.validate(json.loads(answer), SCHEMA)


def test_chat_rejects_combined_constraints(models):
    result = invoke("chat", "-m", models[0], "--regex", "a", "--choice", "b", input="")
    assert result.exit_code == 1
    assert result.stderr == "Error: --regex and --choice cannot be combined; give one constraint.\n"


def quiz_answers(*args):
    result = invoke("quiz", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


def test_constrained_quiz_answers_are_candidates(models):
    questions = builtin_questions()[:6]
    for batch_size in (1, 4):
        results = quiz_answers("-m", models[0], "-m", models[1], "--limit", 6, "--constrained",
                               "--batch-size", batch_size)
        for row in results:
            assert row["constraint"]["type"] == "choice"
            for question, answer in zip(questions, row["answers"]):
                assert answer["answer"] in candidates(question)
                right = answer["answer"] == question.answers[0]
                assert answer["verdict"] == ("right" if right else "wrong")
        if batch_size == 1:
            one_at_a_time = results
    assert [[a["answer"] for a in r["answers"]] for r in results] == [
        [a["answer"] for a in r["answers"]] for r in one_at_a_time]


def test_quiz_with_a_regex_for_every_answer(models):
    (row,) = quiz_answers("-m", models[1], "--limit", 3, "--regex", "[A-Z][a-z]{2,9}")
    assert all(re.fullmatch("[A-Z][a-z]{2,9}", a["answer"]) for a in row["answers"])


def test_quiz_constrained_excludes_other_constraints(models):
    result = invoke("quiz", "-m", models[0], "--constrained", "--choice", "x")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --constrained chooses among each question's")
