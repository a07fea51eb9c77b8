"""--draft-model and --num-draft-tokens through the CLI: same greedy text, stats, bad drafts."""

import json
import shutil

import pytest
from click.testing import CliRunner

from mlx_slm.apps.drafting import auto_draft
from mlx_slm.apps.quantize import quantize_directory
from mlx_slm.commands.cli import main
from mlx_slm.store.home import HOME_ENV
from mlx_slm.synthetic import tiny_config, write_hub_checkpoint


def invoke(*args):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def quantized_copy(model_dir, tmp_path_factory):
    """A 4-bit copy of the tiny model: a self-draft that agrees partly."""
    out = tmp_path_factory.mktemp("draft") / "tiny-4bit"
    quantize_directory(model_dir, out, bits=4, group_size=32)
    return out


def generate_json(model_dir, *extra):
    result = invoke("generate", "-m", str(model_dir), "-p", "The river", "-n", "12",
                    "--ignore-eos", "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("k", [None, "1", "5"])
def test_a_quantized_self_draft_gives_the_same_greedy_tokens(model_dir, quantized_copy, k):
    plain = generate_json(model_dir)
    extra = ("--draft-model", str(quantized_copy)) + (("--num-draft-tokens", k) if k else ())
    drafted = generate_json(model_dir, *extra)
    assert drafted["tokens"] == plain["tokens"]
    assert "draft" not in plain
    draft = drafted["draft"]
    assert draft["draft_model"] == str(quantized_copy)
    assert draft["num_draft_tokens"] == (int(k) if k else "adaptive")
    assert 0 <= draft["accepted"] <= draft["drafted"]
    if k:
        assert draft["drafted"] > 0 and draft["rounds"] > 0
        assert draft["acceptance_rate"] == pytest.approx(draft["accepted"] / draft["drafted"])


def test_the_stats_line_reports_the_draft(model_dir, quantized_copy):
    result = invoke("generate", "-m", str(model_dir), "-p", "The river", "-n", "8",
                    "--draft-model", str(quantized_copy), "--num-draft-tokens", "3")
    assert result.exit_code == 0, result.output
    stats = result.stderr.strip().splitlines()[-1]
    assert "draft: acceptance" in stats and "mean kept" in stats and "K 3" in stats


def test_a_draft_with_another_vocabulary_is_refused(model_dir, tmp_path):
    other = write_hub_checkpoint(tmp_path / "small-vocab", tiny_config(vocab_size=512))
    result = invoke("generate", "-m", str(model_dir), "-n", "2", "--draft-model", str(other))
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"Error: Draft model {other} cannot draft for this model: its vocabulary has 512 "
        "tokens, the target's 32000."]


def test_a_draft_with_another_tokenizer_is_refused(model_dir, tiny_tokenizer_path, tmp_path):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(model_dir, other)
    shutil.copy(tiny_tokenizer_path, other / "tokenizer.model")
    result = invoke("generate", "-m", str(model_dir), "-n", "2", "--draft-model", str(other))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: Draft model")
    assert "tokenizer.model differs from the target's" in lines[0]


def test_a_missing_draft_directory_is_refused(model_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    result = invoke("generate", "-m", str(model_dir), "-n", "2", "--draft-model", str(missing))
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        f"Error: Draft model directory {missing} does not exist."]


def test_auto_picks_the_smallest_cached_model_sharing_the_tokenizer(
        model_dir, quantized_copy, tmp_path, monkeypatch):
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    shutil.copytree(model_dir, models / "same-size")  # not smaller than the target
    shutil.copytree(quantized_copy, models / "small")
    write_hub_checkpoint(models / "other-vocab", tiny_config(num_layers=1, vocab_size=512))
    assert auto_draft(model_dir, models) == models / "small"
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    report = generate_json(model_dir, "--draft-model", "auto")
    assert report["draft"]["draft_model"] == str(models / "small")
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "empty"))
    result = invoke("generate", "-m", str(model_dir), "-n", "2", "--draft-model", "auto")
    assert result.exit_code != 0 and "--draft-model auto found no" in result.output


def test_a_chat_with_a_draft_answers_as_a_fresh_greedy_run_every_turn(tmp_path):
    from mlx_slm import quant
    from mlx_slm.apps.chat import ChatSession, format_chat_stats
    from mlx_slm.chooser import TokenChooser
    from mlx_slm.cpu.layers import prepare
    from mlx_slm.generation import generate_tokens
    from mlx_slm.loader import load, load_model
    from mlx_slm.sample import SamplingOptions
    from mlx_slm.speculative import Draft
    from tests.instruct_fixtures import make_model_dir

    model_dir = make_model_dir(tmp_path / "tiny-Instruct", instruct=True)
    model, tokenizer = load(model_dir)
    draft_model, _ = load_model(model_dir, prepare=False)
    quant.quantize(draft_model, bits=4, group_size=32)
    draft = Draft(prepare(draft_model), num_draft_tokens=3)
    session = ChatSession(model, tokenizer, max_tokens=10, sampling=SamplingOptions(),
                          draft=draft)
    for text in ["Hello there", "What is the capital of Ohio?", "Thanks, and of Utah?"]:
        result = session.send(text)
        ids = session.ids(session.turns[:-1], open_answer=True)
        expected = generate_tokens(model, ids, max_tokens=10,
                                   chooser=TokenChooser(SamplingOptions(), ids),
                                   stop_ids=(tokenizer.eos_id,))
        assert result.tokens == list(expected)
        # The draft's cache holds a prefix of the conversation, like the target's.
        assert draft.cached_ids == (ids + result.tokens)[: len(draft.cached_ids)]
        assert draft.cache[0].offset == len(draft.cached_ids) > len(ids) // 2
    assert "draft: acceptance" in format_chat_stats(session.stats())


def test_a_bench_row_shows_the_draft_next_to_the_plain_path(model_dir, quantized_copy):
    from mlx_slm.bench import report
    from mlx_slm.bench.engines import DraftedEngine, OurEngine
    from mlx_slm.bench.machine import machine_info
    from mlx_slm.bench.plan import directory_source, plan
    from mlx_slm.bench.runner import Settings, run_sweep

    groups = plan([directory_source(str(model_dir))], None, [16], 12)
    engines = [OurEngine(), DraftedEngine(quantized_copy, num_draft_tokens=3)]
    row = next(run_sweep(groups, Settings(reps=2, warmup=1), machine_info(), engines=engines))
    assert row["status"] == "ok", row["reason"]
    assert row["draft_model"] == str(quantized_copy) and row["num_draft_tokens"] == 3
    assert row["draft_speedup"] == pytest.approx(row["draft_gen_tps"] / row["gen_tps"])
    assert 0 <= row["accepted"] <= row["drafted"] > 0
    assert row["acceptance_rate"] == pytest.approx(row["accepted"] / row["drafted"])
    table = report.to_markdown([row])
    assert "draft/plain" in table and "acceptance" in table


def test_bench_refuses_a_missing_draft_in_one_line(model_dir, tmp_path):
    result = invoke("bench", "-m", str(model_dir), "-p", "8", "-n", "2", "-r", "1",
                    "--bandwidth", "10", "--draft-model", str(tmp_path / "nope"))
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1] == (
        f"Error: Draft model directory {tmp_path / 'nope'} does not exist.")
