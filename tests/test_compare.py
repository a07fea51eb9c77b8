"""`mlx-slm compare` end to end on tiny models, and the table it prints."""

import json

import pytest
from click.testing import CliRunner

from mlx_slm.apps.table import render_table
from mlx_slm.backend import active_backend
from mlx_slm.commands.cli import main
from tests.instruct_fixtures import instruct_and_base

PROMPT = "What is the capital of California?"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return instruct_and_base(tmp_path_factory.mktemp("compare"))


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def generated(model, *flags):
    result = run("generate", "-m", model, "-p", PROMPT, "-n", 8, "--json", *flags)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_each_model_answers_in_the_form_that_suits_it(models):
    instruct, base = models
    result = run("compare", "-m", instruct, "-m", base, "-n", 8, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["prompt"] == PROMPT and report["backend"] == active_backend()
    chat_row, completion_row = report["results"]
    assert (chat_row["format"], completion_row["format"]) == ("chat", "completion")
    # The same answers `generate` gives, which picks the format the same way.
    for row, model in ((chat_row, instruct), (completion_row, base)):
        single = generated(model)
        assert row["answer"] == single["text"]
        assert row["prompt_tokens"] == single["prompt_tokens"]
        assert row["peak_memory_gb"] > 0 and row["rss_gb"] > 0 and row["load_s"] > 0
    assert chat_row["prompt_tokens"] > completion_row["prompt_tokens"]  # the chat template


def test_chat_format_can_be_forced_for_every_model(models):
    instruct, base = models
    rows = json.loads(run("compare", PROMPT, "-m", instruct, "-m", base, "-n", 4, "--no-chat",
                          "--json").stdout)["results"]
    assert [r["format"] for r in rows] == ["completion", "completion"]
    assert rows[0]["answer"] == generated(instruct, "--no-chat")["text"][: len(rows[0]["answer"])]


def test_the_table_shows_every_model_side_by_side(models):
    instruct, base = models
    result = run("compare", "-m", instruct, "-m", base, "-n", 8)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"Prompt: {PROMPT}"
    header = next(line for line in lines if line.startswith("model"))
    for column in ("format", "answer", "prompt tok/s", "gen tok/s", "TTFT s", "MLX peak GB",
                   "RSS GB"):
        assert column in header
    assert any(line.startswith("tiny-Instruct  chat") for line in lines)
    assert any(line.startswith("tiny-base      completion") for line in lines)
    assert "[" + str(instruct) + "]" in result.stderr  # progress


def test_a_bad_model_fails_before_any_model_runs(models, tmp_path):
    instruct, _ = models
    result = run("compare", "-m", instruct, "-m", tmp_path / "missing")
    assert result.exit_code == 1
    assert result.stderr.endswith("is neither a model directory nor a Hub repo id (owner/name).\n")
    assert "[" not in result.stderr  # nothing was loaded
    assert run("compare").exit_code == 2  # --model is required


def test_render_table_wraps_and_aligns():
    table = render_table(["name", "text", "n"], [["a", "one two three four five six", "1.5"],
                                                 ["bb", "short", "10.25"]],
                         right=frozenset({2}), wrap={1: 9}, max_lines=2)
    assert table.splitlines() == [
        "name  text         n",
        "----  -------  -----",
        "a     one two    1.5",
        "      three…",  # four lines cut to two
        "bb    short    10.25",
    ]


def test_converted_models_get_their_format_from_the_converter(hub_checkpoint, tokenizer_path,
                                                              tmp_path):
    import shutil

    outs = []
    for name in ("OpenELM-tiny-Instruct", "OpenELM-tiny"):
        source = shutil.copytree(hub_checkpoint, tmp_path / "hub" / name)
        out = tmp_path / "mlx" / name
        result = run("convert", source, out, "--tokenizer", tokenizer_path, "--dtype", "float32")
        assert result.exit_code == 0, result.output
        outs.append(out)
    rows = json.loads(run("compare", "-m", outs[0], "-m", outs[1], "-n", 2, "--json").stdout)
    assert [r["format"] for r in rows["results"]] == ["chat", "completion"]


def test_one_generated_token_has_no_rate_in_compare_and_quiz(models):
    instruct, _ = models
    compared = run("compare", "-m", instruct, "-n", 1, "--json")
    assert compared.exit_code == 0, compared.output
    assert json.loads(compared.stdout)["results"][0]["generation_tps"] is None
    table = run("compare", "-m", instruct, "-n", 1).stdout
    row = next(line for line in table.splitlines() if line.startswith("tiny-Instruct"))
    header = next(line for line in table.splitlines() if line.startswith("model"))
    gen = header.index("gen tok/s") + len("gen tok/s")
    assert row[:gen].rstrip().endswith(" -")  # the gen tok/s cell (right-aligned)
    quizzed = run("quiz", "-m", instruct, "--limit", 2, "-n", 1, "--json")
    assert quizzed.exit_code == 0, quizzed.output
    assert json.loads(quizzed.stdout)["results"][0]["generation_tps"] is None


def test_compare_notes_a_dtype_a_quantized_model_cannot_take(tmp_path):
    from mlx_slm.loader import load, model_dtype
    from tests.test_quant import make_model_dir, quantizable_config

    src = make_model_dir(tmp_path / "base", quantizable_config(), seed=7)
    q4 = tmp_path / "q4"
    assert run("quantize", src, q4, "--no-report").exit_code == 0
    result = run("compare", "Hi", "-m", q4, "-n", 2, "--dtype", "float16")
    assert result.exit_code == 0, result.output
    noted = "[note: --dtype float16 asked, but this 4-bit model computes in" in result.stderr
    assert noted == (model_dtype(load(q4, "float16")[0]) != "float16")
