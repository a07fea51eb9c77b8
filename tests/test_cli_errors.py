"""The README's promise for every command: an error is one line `Error: ...`, a non-zero
exit, and no traceback, whatever the user gives (issue 13)."""

import json

import pytest
from click.testing import CliRunner

from mlx_slm.commands.cli import COMMANDS, main


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def one_line_error(result, code: int = 1) -> str:
    """The error line of a failed run, after checking there is nothing else."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["generate", "chat", "compare", "quiz", "bench"])
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_outside_64_bits_is_a_usage_error(command, seed):
    args = [command, "--seed", seed]
    if command in ("compare", "quiz"):
        args += ["-m", "some/model"]
    line = one_line_error(invoke(*args), code=2)
    assert "--seed" in line and "0<=x<=18446744073709551615" in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_errors_are_one_line_that_points_to_help(command):
    line = one_line_error(invoke(command, "--no-such-option"), code=2)
    assert "No such option '--no-such-option'" in line
    assert line.endswith(f" {command} --help')")


def test_an_unknown_command_is_one_line():
    assert "No such command 'genrate'" in one_line_error(invoke("genrate"), code=2)


NOT_UTF8 = "caf\udce9"  # b"caf\xe9" (Latin-1) as Python's argv decoding keeps it


def test_a_prompt_that_is_not_utf8_is_refused_in_one_line(model_dir):
    for result in (invoke("generate", "-m", str(model_dir), "-p", NOT_UTF8),
                   invoke("generate", "-m", str(model_dir), input=b"caf\xe9 au lait"),
                   invoke("compare", NOT_UTF8, "-m", str(model_dir)),
                   invoke("generate", "-m", str(model_dir), "--chat", "--system", NOT_UTF8)):
        assert "is not valid UTF-8 (at character 3: 'caf\\udce9" in one_line_error(result)


def test_chat_refuses_a_line_that_is_not_utf8_and_goes_on(tmp_path):
    from tests.instruct_fixtures import make_model_dir

    model = make_model_dir(tmp_path / "m-Instruct", instruct=True)
    result = invoke("chat", "-m", str(model), "-n", "2", input=b"caf\xe9\nHello\n")
    assert result.exit_code == 1, result.output  # the chat went on; the exit code tells
    assert "Error: The text is not valid UTF-8" in result.stderr
    assert result.stdout.count("\n") == 1  # "Hello" was answered
    line = one_line_error(invoke("chat", "-m", str(model), "--system", NOT_UTF8))
    assert "not valid UTF-8" in line


def test_an_empty_prompt_is_an_error_not_the_default_question(model_dir):
    for result in (invoke("generate", "-m", str(model_dir), "-p", ""),
                   invoke("generate", "-m", str(model_dir), "-p", "-", input=""),
                   invoke("generate", "-m", str(model_dir), input=" \n"),
                   invoke("compare", "", "-m", str(model_dir))):
        assert one_line_error(result).startswith("Error: The prompt is empty")


def test_an_empty_pipe_is_an_empty_prompt(model_dir):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mlx_slm", "generate", "-m", str(model_dir)],
                          input="", capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("Error: The prompt is empty")


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch, model_dir):
    import shutil

    import mlx_slm.convert.auto

    def no_hub(*args, **kwargs):
        raise AssertionError("sent to the Hub")

    monkeypatch.setattr(mlx_slm.convert.auto, "convert", no_hub)
    shutil.copytree(model_dir, tmp_path / "out" / "my-model")
    monkeypatch.chdir(tmp_path)
    for result in (invoke("generate", "-m", "out/my-modle"),
                   invoke("convert", "out/my-modle", "converted")):
        line = one_line_error(result)
        assert line.startswith("Error: No directory out/my-modle exists (did you mean "
                               "out/my-model?). It would read as the Hub repo out/my-modle")
    assert not (tmp_path / "converted").exists()


def test_system_turns_the_chat_format_on_for_a_base_model(tmp_path):
    from tests.instruct_fixtures import make_model_dir

    base = make_model_dir(tmp_path / "tiny-base")
    args = ["generate", "-m", str(base), "-p", "Hi", "-n", "2", "--json"]
    plain = invoke(*args)
    with_system = invoke(*args, "--system", "Be brief.")
    assert json.loads(plain.stdout)["chat_format"] is False
    assert json.loads(with_system.stdout)["chat_format"] is True
    assert "[--system given: chat format on, although this is a base model]" in \
        with_system.stderr
    line = one_line_error(invoke(*args, "--system", "Be brief.", "--no-chat"), code=2)
    assert "--system needs the chat format; drop --no-chat." in line


def test_an_instruct_name_without_metadata_gets_the_chat_format_as_convert_guesses(
        tmp_path, hub_checkpoint, tokenizer_path):
    import shutil

    from mlx_slm.convert.pipeline import convert

    raw = tmp_path / "OpenELM-270M-Instruct"  # a Hub layout: no mlx-slm metadata
    shutil.copytree(hub_checkpoint, raw)
    shutil.copy(tokenizer_path, raw / "tokenizer.model")
    result = invoke("generate", "-m", str(raw), "-p", "Hi", "-n", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chat_format"] is True
    assert "the name says Instruct: chat format on (--no-chat for a plain completion)" in \
        result.stderr
    assert convert(raw, tmp_path / "converted", log=lambda _: None).instruct is True


def test_quantization_options_are_the_same_in_convert_and_quantize(tmp_path):
    from mlx_slm.commands.cli import main as group

    def options(command):
        ctx = group.make_context("mlx-slm", [command, "--help"], resilient_parsing=True)
        cmd = group.get_command(ctx, command)
        return {p.name: (repr(p.type), p.default, p.help) for p in cmd.params
                if p.name in ("q_bits", "q_group_size", "q_recipe", "no_report",
                              "report_tokens")}

    assert options("convert") == options("quantize") and len(options("convert")) == 5
    convert = invoke("convert", str(tmp_path), str(tmp_path / "o"), "-q", "--q-bits", "7")
    quantize = invoke("quantize", str(tmp_path), str(tmp_path / "o"), "--q-bits", "7")
    lines = [one_line_error(r, code=2).split(" (see")[0] for r in (convert, quantize)]
    assert lines[0] == lines[1] and "'7' is not one of '2', '3', '4', '5', '6', '8'" in lines[0]


@pytest.mark.parametrize("option", ["--temp", "--top-p", "--min-p", "--repetition-penalty"])
def test_sampling_values_must_be_finite(option):
    line = one_line_error(invoke("generate", option, "inf"), code=2)
    assert "must be a finite number, got inf" in line


def test_an_empty_stop_string_is_a_usage_error():
    line = one_line_error(invoke("generate", "--stop", ""), code=2)
    assert "an empty stop string would never stop anything" in line


def test_questions_that_are_not_utf8_say_so(tmp_path, model_dir):
    questions = tmp_path / "q.jsonl"
    questions.write_bytes(b'{"question": "caf\xe9?"}\n')
    line = one_line_error(invoke("quiz", "-m", str(model_dir), "--questions", str(questions)))
    assert line == f"Error: {questions} is not UTF-8 text; --questions takes a UTF-8 JSONL file."


def test_mlx_slm_alone_prints_the_help_and_exits_0():
    result = invoke()
    assert result.exit_code == 0 and "Error" not in result.output
    assert result.stdout.startswith("Usage: ") and "Commands:" in result.stdout


@pytest.mark.parametrize("args, option", [
    (["generate", "-p", "a", "-p", "b"], "--prompt/-p"),
    (["generate", "--prompt=a", "-pb"], "--prompt/-p"),
    (["generate", "-n", "3", "--max-tokens", "4"], "--max-tokens/-n"),
    (["generate", "--chat", "--no-chat"], "--chat/--no-chat"),
    (["chat", "--temp", "0.5", "--temp", "1"], "--temp"),
    (["convert", "a", "b", "--dtype", "float16", "--dtype", "float32"], "--dtype"),
    (["bench", "-n", "8", "-n", "9"], "--gen-tokens/-n"),
])
def test_an_option_given_twice_is_a_usage_error_not_last_one_wins(args, option):
    line = one_line_error(invoke(*args), code=2)
    assert f"{option} was given more than once; give it once." in line


def test_repeatable_options_may_repeat(model_dir):
    result = invoke("generate", "-m", str(model_dir), "-n", "2", "--stop", "x", "--stop", "y",
                    "-p", "Hi")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["generate", "chat", "bench"])
def test_num_draft_tokens_without_a_draft_model_is_a_usage_error(command):
    line = one_line_error(invoke(command, "--num-draft-tokens", "4"), code=2)
    assert "--num-draft-tokens needs --draft-model" in line


@pytest.mark.parametrize("args, idle", [
    (["--top-p", "0.5", "--seed", "3"], "--top-p, --seed change nothing at --temp 0"),
    (["--top-k", "5", "--min-p", "0.1"], "--top-k, --min-p change nothing at --temp 0"),
    (["--top-p", "0"], "--top-p changes nothing at --temp 0"),
    (["--repetition-penalty", "1", "--repetition-context", "8"],
     "--repetition-context changes nothing with --repetition-penalty 1"),
])
def test_sampling_options_that_change_nothing_get_a_note(model_dir, args, idle):
    result = invoke("generate", "-m", str(model_dir), "-n", "2", "-p", "Hi", *args)
    assert result.exit_code == 0, result.output
    assert f"[note: {idle}" in result.stderr
    sampled = invoke("generate", "-m", str(model_dir), "-n", "2", "-p", "Hi", "--temp", "0.7",
                     "--top-p", "0.5", "--seed", "3")
    assert sampled.exit_code == 0 and "[note" not in sampled.stderr


@pytest.mark.parametrize("args, message", [
    (["convert", "SRC", "out", "--report-tokens", "9"], "--report-tokens needs -q/--quantize"),
    (["convert", "SRC", "out", "--no-report"], "--no-report needs -q/--quantize"),
    (["convert", "SRC", "out", "-q", "--no-report", "--report-tokens", "9"],
     "--report-tokens sets the quality report, which --no-report skips"),
    (["quantize", "SRC", "out", "--no-report", "--report-tokens", "9"],
     "--report-tokens sets the quality report, which --no-report skips"),
])
def test_convert_and_quantize_options_that_would_be_ignored(tmp_path, model_dir, args, message):
    args = [str(model_dir) if a == "SRC" else str(tmp_path / a) if a == "out" else a
            for a in args]
    line = one_line_error(invoke(*args), code=2)
    assert message.replace("SRC", str(model_dir)) in line
    assert not (tmp_path / "out").exists()
