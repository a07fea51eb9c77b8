"""`mlx-slm generate` and `mlx-slm info` through Click's runner: output, stats, errors."""

import json
import shutil
import sys

import mlx.core as mx
import pytest
from click.testing import CliRunner

from mlx_slm.backend import active_backend
from mlx_slm.chooser import TokenChooser
from mlx_slm.commands.cli import main
from mlx_slm.generation import Generation, generate_tokens, stream_text
from mlx_slm.loader import load
from mlx_slm.sample import SamplingOptions
from mlx_slm.store.files import write_json
from mlx_slm.synthetic import random_weights, tiny_config
from mlx_slm.weights import save_weights
from tests.conftest import LLAMA2_TOKENIZER


def invoke(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input)


def test_json_reports_every_field_and_greedy_tokens(model_dir):
    result = invoke("generate", "-m", str(model_dir), "-p", "Hello there", "-n", "6",
                    "--repetition-penalty", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("text", "tokens", "prompt_tokens", "generation_tokens", "prompt_tps",
                "generation_tps", "ttft_s", "load_s", "peak_memory_gb", "peak_rss_gb", "backend",
                "dtype", "blas", "kernels"):
        assert key in report
    model, tokenizer = load(model_dir)
    prompt = tokenizer.encode("Hello there")
    expected = list(generate_tokens(model, prompt, max_tokens=6, stop_ids=(2,)))
    assert report["tokens"] == expected
    assert report["text"] == tokenizer.decode(expected)
    assert report["prompt_tokens"] == len(prompt)
    assert report["backend"] == active_backend() and report["dtype"] == "float32"
    assert report["peak_memory_gb"] > 0 and report["peak_rss_gb"] > 0


def test_text_streams_to_stdout_and_stats_to_stderr(model_dir):
    result = invoke("generate", "-m", str(model_dir), "-p", "Hi", "-n", "5")
    assert result.exit_code == 0
    model, tokenizer = load(model_dir)
    ids = tokenizer.encode("Hi")
    tokens = list(generate_tokens(model, ids, max_tokens=5, stop_ids=(2,),
                                  chooser=TokenChooser(SamplingOptions(), ids)))
    assert result.stdout == tokenizer.decode(tokens) + "\n"
    stats = result.stderr.strip().splitlines()[-1]
    for part in ("prompt: 2 tokens", "generation: 5 tokens", "tok/s",
                 "TTFT", "(cold: includes compiling)", "load",
                 "peak MLX", "peak RSS", f"{active_backend()} backend", "float32"):
        assert part in stats


def test_prompt_from_stdin(model_dir):
    piped = invoke("generate", "-m", str(model_dir), "-n", "3", "--json", input="Hi")
    flag = invoke("generate", "-m", str(model_dir), "-n", "3", "--json", "-p", "Hi")
    assert json.loads(piped.stdout)["tokens"] == json.loads(flag.stdout)["tokens"]


def test_prompt_longer_than_context_is_refused(model_dir):
    long_prompt = "word " * 2100  # BOS + "▁word" x 2100 + the trailing "▁"
    result = invoke("generate", "-m", str(model_dir), "-p", long_prompt, "-n", "3")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: The prompt has 2102 tokens but the model's context "
                                    "is 2048; shorten the prompt.")
    assert len(result.stderr.strip().splitlines()) == 1


def test_generation_is_capped_by_the_context(tmp_path, model_dir):
    small = tmp_path / "small"
    shutil.copytree(model_dir, small)
    config = json.loads((small / "config.json").read_text())
    write_json(small / "config.json", {**config, "max_context_length": 8})
    result = invoke("generate", "-m", str(small), "-p", "Hi", "-n", "50", "--json",
                    "--ignore-eos")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["generation_tokens"] == 6
    assert "capped at 6 tokens" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--temp", "-1"], "temperature must be >= 0.0"),
    (["--top-p", "2"], "top-p must be between 0.0 and 1.0"),
    (["--min-p", "1.5"], "min-p must be between 0.0 and 1.0"),
    (["--top-k", "-1"], "top-k must be >= 0"),
    (["--repetition-penalty", "0"], "repetition-penalty must be > 0.0"),
    (["--max-tokens", "0"], "0 is not in the range x>=1"),
])
def test_invalid_sampling_values_show_the_valid_range(model_dir, args, message):
    result = invoke("generate", "-m", str(model_dir), *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_missing_model_dir_and_bad_name(tmp_path):
    result = invoke("generate", "-m", str(tmp_path / "nope" / "deeper"), "-n", "1")
    assert result.exit_code == 1 and "neither a model directory nor a Hub repo id" in result.stderr
    (tmp_path / "file.txt").write_text("x")
    result = invoke("generate", "-m", str(tmp_path / "file.txt"), "-n", "1")
    assert result.exit_code == 1 and "is a file" in result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def eos_model_dir(tmp_path_factory):
    """A model whose every next token is EOS: the residual's dim 0 is large and positive,
    the final norm passes only dim 0, and only the untied head's EOS row reads it."""
    out = tmp_path_factory.mktemp("eos") / "model"
    out.mkdir()
    config = tiny_config(vocab_size=32000, share_input_output_layers=False)
    weights = random_weights(config, seed=1)
    emb = weights["transformer.token_embeddings.weight"]
    weights["transformer.token_embeddings.weight"] = mx.concatenate(
        [mx.full((emb.shape[0], 1), 50.0), emb[:, 1:]], axis=1)
    norm = mx.zeros((config["model_dim"],))
    weights["transformer.norm.weight"] = norm.at[0].add(1.0)
    head = mx.zeros((config["vocab_size"], config["model_dim"]))
    weights["lm_head.weight"] = head.at[2, 0].add(1.0)
    save_weights(out, weights)
    write_json(out / "config.json", config)
    shutil.copy(LLAMA2_TOKENIZER, out / "tokenizer.model")
    return out


def test_stops_at_eos_unless_ignored(eos_model_dir):
    stopped = json.loads(invoke("generate", "-m", str(eos_model_dir), "-n", "5",
                                "--json").stdout)
    assert stopped["generation_tokens"] == 0 and stopped["finish_reason"] == "eos"
    ignored = json.loads(invoke("generate", "-m", str(eos_model_dir), "-n", "5", "--json",
                                "--ignore-eos", "--repetition-penalty", "1").stdout)
    assert ignored["tokens"] == [2] * 5 and ignored["finish_reason"] == "length"


class FakeTokenizer:
    """Decodes each id to a fixed string, to test stop strings exactly."""

    eos_id = 2

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)

    def detokenizer(self):
        outer = self

        class Detok:
            text = ""

            def add(self, token):
                piece = outer.pieces[token]
                self.text += piece
                return piece

            def finish(self):
                return ""

        return Detok()


def test_stop_strings_end_generation_and_are_not_printed(model_dir, monkeypatch):
    import mlx_slm.generation as gen

    script = iter([5, 6, 7, 8, 9])
    monkeypatch.setattr(gen, "generate_tokens", lambda *a, **k: script)
    pieces = {5: "The answer", 6: " is 4", 7: "2.\nQ", 8: ": next", 9: " more"}
    shown = []
    result = stream_text(None, FakeTokenizer(pieces), [1], stop_strings=("\nQ:",),
                         on_text=shown.append)
    assert result.text == "The answer is 42."
    assert "".join(shown) == "The answer is 42."
    assert result.finish_reason == "stop" and result.tokens == [5, 6, 7, 8]


def test_generation_rates_start_the_clock_at_the_first_token():
    result = Generation(tokens=[1] * 11, prompt_tokens=100, prompt_s=0.5, generation_s=2.0)
    assert result.prompt_tps == 200.0
    assert result.generation_tps == 5.0  # 10 tokens after the first, in 2 s
    assert Generation(tokens=[1], generation_s=0.0).generation_tps == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux") or active_backend() != "cpu",
                    reason="the BLAS hint is for Linux's CPU backend")
def test_reference_blas_prints_the_fix(model_dir, monkeypatch):
    import mlx_slm.cpu.blas

    monkeypatch.setattr(mlx_slm.cpu.blas, "blas_in_use", lambda: "reference")
    result = invoke("generate", "-m", str(model_dir), "-n", "1")
    assert "apt-get install libopenblas0-pthread" in result.stderr


def test_info_lists_layers(model_dir):
    result = invoke("info", str(model_dir), "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    config = json.loads((model_dir / "config.json").read_text())
    assert [r["q_heads"] for r in report["layers"]] == config["num_query_heads"]
    assert report["dtype"] == "float32" and report["bits_per_weight"] == 32.0
    text = invoke("info", str(model_dir)).stdout
    assert "q_heads" in text and "parameters" in text


def test_json_carries_the_settings_that_produced_it(model_dir):
    from mlx_slm.sample import SamplingOptions

    result = invoke("generate", "-m", str(model_dir), "-p", "Hi", "-n", "3", "--temp", "0.7",
                    "--top-k", "5", "--seed", "11", "--stop", "xyz", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = SamplingOptions(temperature=0.7, top_k=5, seed=11).as_dict()
    assert report["sampling"] == expected and report["stop_strings"] == ["xyz"]
    assert report["max_tokens"] == 3 and report["ignore_eos"] is False
    assert "rss_gb" not in report and report["peak_rss_gb"] > 0


def test_one_generated_token_has_no_rate_and_a_singular(model_dir):
    report = json.loads(invoke("generate", "-m", str(model_dir), "-p", "Hi", "-n", "1",
                               "--ignore-eos", "--json").stdout)
    assert report["generation_tokens"] == 1 and report["generation_tps"] is None
    stats = invoke("generate", "-m", str(model_dir), "-p", "Hi", "-n", "1",
                   "--ignore-eos").stderr.strip().splitlines()[-1]
    assert "generation: 1 token |" in stats and "0.0 tok/s" not in stats


def test_a_quantized_model_says_its_bits_and_a_dtype_it_cannot_take(tmp_path):
    from tests.test_quant import make_model_dir, quantizable_config

    src = make_model_dir(tmp_path / "base", quantizable_config(), seed=7)
    q4 = tmp_path / "q4"
    assert invoke("quantize", str(src), str(q4), "--no-report").exit_code == 0
    result = invoke("generate", "-m", str(q4), "-p", "Hi", "-n", "2")
    assert result.exit_code == 0, result.output
    stats = result.stderr.strip().splitlines()[-1]
    assert stats.endswith("compute)") and ", 4-bit (" in stats
    asked = invoke("generate", "-m", str(q4), "-p", "Hi", "-n", "2", "--dtype", "float16",
                   "--json")
    got = json.loads(asked.stdout)["dtype"]
    # Where quantized layers compute in another dtype (the CPU backend), a note says so.
    assert got == "float16" or (
        f"[note: --dtype float16 asked, but this 4-bit model computes in {got}" in asked.stderr)


def test_a_positional_prompt_and_a_piped_one_equal_p(model_dir):
    def tokens(*args, input=None):
        result = invoke("generate", "-m", str(model_dir), "-n", "3", "--json", *args,
                        input=input)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        return report["prompt_tokens"], report["tokens"]

    flag = tokens("-p", "Hi there")
    assert tokens("Hi there") == flag
    assert tokens(input="Hi there\n") == flag  # echo's newline is not part of the prompt
    assert tokens("-p", "-", input="Hi there\r\n") == flag
    both = invoke("generate", "-m", str(model_dir), "Hi", "-p", "Ho")
    assert both.exit_code == 2 and "Give the prompt once" in both.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_p_dash_on_a_terminal_says_how_to_end_the_prompt(model_dir):
    import os
    import subprocess

    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlx_slm", "generate", "-m", str(model_dir), "-n", "2", "-p", "-"],
        stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(follower)
    try:
        hint = proc.stderr.readline().decode()
        assert hint == "[reading the prompt from the terminal; end it with Ctrl-D]\n"
        os.write(leader, b"Hello\n\x04")
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_chat_notes_a_dtype_a_quantized_model_cannot_take(tmp_path):
    from tests.test_quant import make_model_dir, quantizable_config

    src = make_model_dir(tmp_path / "base", quantizable_config(), seed=7)
    q4 = tmp_path / "q4"
    assert invoke("quantize", str(src), str(q4), "--no-report").exit_code == 0
    chat = invoke("chat", "-m", str(q4), "-n", "2", "--dtype", "float16", input="Hi\n")
    assert chat.exit_code == 0, chat.output
    model, _ = load(q4, "float16")
    from mlx_slm.loader import model_dtype

    noted = "[note: --dtype float16 asked, but this 4-bit model computes in" in chat.stderr
    assert noted == (model_dtype(model) != "float16")
