"""Quiz questions, scoring on hand-written answers, and `mlx-slm quiz` end to end."""

import json

import pytest
from click.testing import CliRunner

from mlx_slm.apps.quiz import (
    Question,
    builtin_questions,
    completion_prompt,
    cut_answer,
    judge,
    load_questions,
    parse_questions,
)
from mlx_slm.commands.cli import main
from mlx_slm.errors import SlmError
from tests.instruct_fixtures import instruct_and_base

CALIFORNIA = Question("What is the capital of California?", ["Sacramento"],
                      ["Los Angeles", "San Francisco", "San Diego"])
MINNESOTA = Question("What is the capital of Minnesota?", ["Saint Paul", "St. Paul"],
                     ["Minneapolis"])
MISSISSIPPI = Question("What is the capital of Mississippi?", ["Jackson"], ["Jacksonville"])


@pytest.mark.parametrize("answer, verdict", [
    ("The capital of California is Sacramento.", "right"),
    ("sacramento", "right"),
    ("The capital of California is Los Angeles.", "wrong"),
    ("It is either Sacramento or Los Angeles.", "hedged"),
    ("Sacramento, or maybe San Diego.", "hedged"),
    ("Sacramento (or possibly San Francisco)", "hedged"),
    ("Sacramento, not Los Angeles, is the capital.", "right"),
    ("Sacramento is the capital; Los Angeles is the largest city.", "right"),
    ("Los Angeles is the largest city and Sacramento is the capital.", "wrong"),
    ("Either Los Angeles or Sacramento.", "wrong"),
    ("California's capital is a city in the Central Valley.", "none"),
    ("", "none"),
    ("SACRAMENTO!", "right"),
    ("Sacramentos are not a thing; San Diego is.", "wrong"),
])
def test_judging_hand_written_answers(answer, verdict):
    assert judge(answer, CALIFORNIA) == verdict


def test_judging_spellings_diacritics_and_word_boundaries():
    assert judge("It's St.  Paul.", MINNESOTA) == "right"
    assert judge("It is Saint Paul, not Minneapolis.", MINNESOTA) == "right"
    assert judge("Minneapolis–Saint Paul", MINNESOTA) == "wrong"
    assert judge("Jacksonville.", MISSISSIPPI) == "wrong"  # not a mention of Jackson
    assert judge("Jackson, near Jacksonville.", MISSISSIPPI) == "right"
    accented = Question("Capital of Colombia?", ["Bogotá"], ["Medellín"])
    assert judge("bogota", accented) == "right" and judge("MEDELLIN or Bogotá", accented) == "wrong"
    # At one position the longer candidate is the one named.
    new_york = Question("Capital of New York?", ["Albany"], ["New York City"])
    assert judge("New York City, not Albany.", new_york) == "wrong"
    assert judge("The capital of New York is Albany.", new_york) == "right"


def test_builtin_questions_are_the_fifty_state_capitals():
    questions = builtin_questions()
    assert len(questions) == 50
    states = {q.question.removeprefix("What is the capital of ").rstrip("?") for q in questions}
    assert len(states) == 50 and {"California", "Ohio", "Wyoming"} <= states
    for q in questions:
        assert q.wrong and not set(q.answers) & set(q.wrong)
        # The data is consistent with the scoring: a textbook answer is right, the state's
        # biggest other city is wrong.
        assert judge(f"{q.cue} {q.answers[0]}.", q) == "right", q
        assert judge(f"{q.cue} {q.wrong[0]}.", q) == "wrong", q


def test_prompt_cues_and_answer_cuts():
    ohio = next(q for q in builtin_questions() if "Ohio" in q.question)
    assert completion_prompt(ohio) == ("Q: What is the capital of Ohio?\n"
                                       "A: The capital of Ohio is")
    assert completion_prompt(Question("2+2?", ["4"])) == "Q: 2+2?\nA:"
    assert cut_answer(" Columbus.\nQ: What", chat=False) == (" Columbus.", True)
    assert cut_answer("\n Columbus", chat=False) == ("\n Columbus", False)  # keeps going
    assert cut_answer("Columbus.\n<|user|>\n", chat=True) == ("Columbus.\n", True)
    assert cut_answer("Columbus.\nMore", chat=True) == ("Columbus.\nMore", False)


@pytest.mark.parametrize("line, message", [
    ('{"question": "Q?"', r"line 2: not valid JSON"),
    ('["Q?", "A"]', "line 2: must be a JSON object"),
    ('{"question": "Q?"}', 'line 2: "answer" must be a non-empty string or a list of them'),
    ('{"question": "", "answer": "A"}', 'line 2: "question" must be a non-empty string'),
    ('{"question": "Q?", "answer": []}', '"answer" must be a non-empty string or a list'),
    ('{"question": "Q?", "answer": "A", "wrong": "B"}', '"wrong" must be a list of non-empty'),
    ('{"question": "Q?", "answer": "A", "cue": 3}', '"cue" must be a string'),
    ('{"question": "Q?", "anwser": "A"}', "line 2: unknown key 'anwser'"),
])
def test_bad_question_lines_are_named(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "Ok?", "answer": "Yes"}\n' + line + "\n")
    with pytest.raises(SlmError, match=message) as info:
        load_questions(path)
    assert str(info.value).startswith(f"{path} line 2: ")


def test_question_files_parse_and_missing_ones_are_errors(tmp_path):
    text = '\n{"question": "Q?", "answer": ["A", "Ay"], "wrong": ["B"], "cue": "It is"}\n\n'
    assert parse_questions(text, "x") == [Question("Q?", ["A", "Ay"], ["B"], "It is")]
    with pytest.raises(SlmError, match="holds no questions"):
        parse_questions("\n\n", "empty.jsonl")
    with pytest.raises(SlmError, match="does not exist; --questions takes a UTF-8 JSONL file"):
        load_questions(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return instruct_and_base(tmp_path_factory.mktemp("quiz"))


def quiz(*args):
    return CliRunner().invoke(main, ["quiz", *map(str, args)])


def test_quiz_end_to_end_with_json(models):
    instruct, base = models
    result = quiz("-m", instruct, "-m", base, "--limit", 5, "--batch-size", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["questions"] == 5 and report["batch_size"] == 2
    first, second = report["results"]
    assert (first["format"], second["format"]) == ("chat", "completion")
    for row in report["results"]:
        assert row["total"] == 5 and len(row["answers"]) == 5
        assert row["correct"] == sum(a["verdict"] == "right" for a in row["answers"])
        assert row["peak_memory_gb"] > 0 and row["prompt_tps"] > 0
    assert first["answers"][0]["expected"] == "Montgomery"
    assert "[" + str(instruct) + "] 2/5 questions" in result.stderr
    assert "5/5 questions" in result.stderr


@pytest.mark.slow
def test_batched_quiz_answers_equal_one_at_a_time(models):
    instruct, base = models
    runs = [json.loads(quiz("-m", instruct, "-m", base, "--limit", 6, "--batch-size", size,
                            "--json").stdout)["results"] for size in (1, 4)]
    for one, batched in zip(*runs):
        assert [a["answer"] for a in one["answers"]] == [a["answer"] for a in batched["answers"]]


def test_quiz_scores_a_model_that_gives_the_expected_answer(models, tmp_path):
    """The questions are written so the tiny model's own greedy answer is the right one
    for the first and a wrong candidate for the second."""
    instruct, _ = models
    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"question": "Name a city.", "answer": "x"}\n'
                     '{"question": "Name a town.", "answer": "x"}\n')
    answers = [a["answer"] for a in
               json.loads(quiz("-m", instruct, "--questions", probe, "--json").stdout)
               ["results"][0]["answers"]]
    words = [next(w for w in a.split() if w.isalpha()) for a in answers]
    questions = tmp_path / "q.jsonl"
    questions.write_text(
        json.dumps({"question": "Name a city.", "answer": words[0], "wrong": ["Nowhere"]}) + "\n"
        + json.dumps({"question": "Name a town.", "answer": "Nowhere", "wrong": [words[1]]})
    )
    result = quiz("-m", instruct, "--questions", questions)
    assert result.exit_code == 0, result.output
    assert "1/2 (50%)" in result.stdout
    assert "tiny-Instruct" in result.stdout and "accuracy" in result.stdout


def test_quiz_reports_bad_input(models, tmp_path):
    instruct, _ = models
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?"}\n')
    result = quiz("-m", instruct, "--questions", bad)
    assert result.exit_code == 1
    assert result.stderr == (f'Error: {bad} line 1: "answer" must be a non-empty string or a '
                             "list of them.\n")
    result = quiz("-m", instruct, "-m", tmp_path / "missing")
    assert result.exit_code == 1 and "is neither a model directory" in result.stderr
