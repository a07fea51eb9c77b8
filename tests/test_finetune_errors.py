"""Bad fine-tuning data: one clear line naming the file and line, exit 1, nothing written."""

import json

import pytest
from click.testing import CliRunner

from mlx_slm.commands.cli import main
from tests.finetune_fixtures import chat_line, write_tiny_model

GOOD = chat_line("the capital of ohio", "mali")
TEXT = json.dumps({"text": "the city of peru"})
LONG = json.dumps({"text": "the river of mali is near the town " * 40})

CASES = {
    "not-json": ([GOOD, "{not json"], "train.jsonl:2: not JSON"),
    "not-an-object": ([GOOD, "[1, 2]"], "train.jsonl:2: each line must be a JSON object"),
    "unknown-format": ([json.dumps({"question": "a", "answer": "b"})],
                       "train.jsonl:1: unknown format (keys answer, question)"),
    "empty-text": ([TEXT, json.dumps({"text": "  "})], "train.jsonl:2: empty text"),
    "empty-completion": ([json.dumps({"prompt": "a", "completion": ""})],
                         "train.jsonl:1: empty completion"),
    "mixed": ([TEXT, GOOD], "train.jsonl:2: a 'chat' line in a file whose line 1 is 'text'"),
    "no-assistant": ([json.dumps({"messages": [{"role": "user", "content": "hi"}]})],
                     "train.jsonl:1: no assistant message"),
    "bad-role": ([json.dumps({"messages": [{"role": "bot", "content": "hi"}]})],
                 "train.jsonl:1: message 1 needs a role"),
    "too-long": ([TEXT, LONG], "1 sequence(s) exceed --max-seq-length 64 and would be cut: "
                               "train.jsonl:2"),
    "empty-file": ([""], "train.jsonl holds no examples"),
    "mask-on-text": ([TEXT], "--mask-prompt needs prompt/completion or messages data"),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer_path):
    return write_tiny_model(tmp_path_factory.mktemp("fterr") / "tiny", tiny_tokenizer_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_one_line_and_nothing_is_written(tmp_path, tiny_dir, case):
    lines, expected = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")
    adapter = tmp_path / "out" / "adapter"
    args = ["finetune", "-m", str(tiny_dir), "--data", str(data), "--adapter-path",
            str(adapter), "--iters", "2", "--batch-size", "1", "--max-seq-length", "64"]
    if case == "mask-on-text":
        args.append("--mask-prompt")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines_out = result.output.strip().splitlines()
    assert len(lines_out) == 1 and lines_out[0].startswith("Error: "), result.output
    assert expected in lines_out[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_truncate_cuts_and_names_what_it_cut(tmp_path, tiny_dir):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join([TEXT, LONG]) + "\n")
    result = CliRunner().invoke(main, [
        "finetune", "-m", str(tiny_dir), "--data", str(data), "--adapter-path",
        str(tmp_path / "adapter"), "--iters", "2", "--batch-size", "1", "--max-seq-length",
        "64", "--truncate"])
    assert result.exit_code == 0, result.output
    assert "Cut to --max-seq-length: train.jsonl:2" in result.output


def test_a_missing_data_directory_file_is_named(tmp_path, tiny_dir):
    (tmp_path / "data").mkdir()
    result = CliRunner().invoke(main, ["finetune", "-m", str(tiny_dir), "--data",
                                       str(tmp_path / "data")])
    assert result.exit_code == 1 and "has no train.jsonl" in result.output
