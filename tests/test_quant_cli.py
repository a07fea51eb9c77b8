"""`mlx-slm quantize`, `quality` and `perplexity` from the command line: output, files, errors."""

import json
import shutil

import pytest
from click.testing import CliRunner

from mlx_slm.commands.cli import main
from mlx_slm.loader import load_model
from mlx_slm.synthetic import tiny_config, write_hub_checkpoint
from tests.test_quant import make_model_dir, quantizable_config


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("cli") / "base", quantizable_config(), seed=7)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def only_entries(parent):
    return sorted(p.name for p in parent.iterdir())


def test_quantize_writes_a_loadable_directory_and_reports_quality(tmp_path, src):
    out = tmp_path / "q4"
    result = run("quantize", src, out, "--report-tokens", 48)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Quantized {src} -> {out}: 4-bit, group size 64")
    for row in ("perplexity", "weights on disk", "weight memory", "bits per weight",
                "KL(base||quant)", "top-1 agreement"):
        assert row in result.output
    assert "48 tokens" in result.output
    assert only_entries(out) == ["config.json", "manifest.json", "model.safetensors",
                                 "tokenizer.model"]
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    model, _ = load_model(out)
    assert model.transformer.token_embeddings.bits == 4
    assert only_entries(tmp_path) == ["q4"]  # no temporary directory left behind


def test_quantize_with_a_recipe_and_no_report(tmp_path, src):
    out = tmp_path / "mixed"
    result = run("quantize", src, out, "--q-bits", 3, "--q-group-size", 32, "--q-recipe",
                 "early-embed", "--no-report")
    assert result.exit_code == 0, result.output
    assert ", recipe early-embed: 5 layers at 6-bit" in result.output
    assert "perplexity" not in result.output
    config = json.loads((out / "config.json").read_text())["quantization"]
    assert config["transformer.layers.0.ffn.proj_1"] == {"group_size": 32, "bits": 6,
                                                         "mode": "affine"}
    assert "transformer.layers.1.ffn.proj_1" not in config


def test_quantize_without_a_tokenizer_fails_before_writing(tmp_path):
    hub = write_hub_checkpoint(tmp_path / "hub", quantizable_config(vocab_size=1000))
    result = run("quantize", hub, tmp_path / "q")
    assert result.exit_code == 1
    assert result.output == (f"Error: {hub} has no tokenizer.model, so it is not a converted "
                             "model directory; convert and quantize in one step: mlx-slm "
                             f"convert {hub} OUT_DIR -q.\n")
    assert only_entries(tmp_path) == ["hub"]


def test_force_replaces_an_existing_directory(tmp_path, src):
    out = tmp_path / "q"
    out.mkdir()
    (out / "old.txt").write_text("old")
    refused = run("quantize", src, out, "--no-report")
    assert refused.exit_code == 1
    assert refused.output == f"Error: {out} already exists; pass --force to replace it, or " \
                             "choose another output directory.\n"
    assert only_entries(out) == ["old.txt"]
    assert run("quantize", src, out, "--no-report", "--force").exit_code == 0
    assert "old.txt" not in only_entries(out) and (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--q-bits", 7], "Invalid value for '--q-bits': '7' is not one of '2', '3', '4', "
                          "'5', '6', '8'."),
        (["--q-group-size", 100], "Invalid value for '--q-group-size': '100' is not one of "
                                  "'32', '64', '128'."),
        (["--q-recipe", "mixed_3_6"], "Unknown quantization recipe 'mixed_3_6': choose one of "
                                      "early, early-embed, early-embed-attn."),
        (["--q-bits", 8, "--q-recipe", "early"], "Recipe 'early' gives some layers more than 8 "
                                                 "bits, and 8 is the most there is; lower the "
                                                 "bit width or drop the recipe."),
    ],
)
def test_bad_settings_are_one_line_errors_and_write_nothing(tmp_path, src, args, message):
    result = run("quantize", src, tmp_path / "out", *args)
    usage = message.startswith("Invalid value")  # a usage error (exit 2), as in convert
    assert result.exit_code == (2 if usage else 1)
    assert result.output.startswith(f"Error: {message}") and len(result.output.splitlines()) == 1
    assert only_entries(tmp_path) == []


def test_group_size_that_does_not_divide_a_layer_is_refused_naming_it(tmp_path):
    src = make_model_dir(tmp_path / "odd", tiny_config(vocab_size=1000))
    result = run("quantize", src, tmp_path / "out", "--q-group-size", 64)
    assert result.exit_code == 1
    assert result.output == ("Error: Group size 64 does not divide the width 32 of layer "
                             "transformer.layers.0.ffn.proj_2; choose --q-group-size 32.\n")
    assert only_entries(tmp_path) == ["odd"]


def test_quantizing_a_quantized_directory_is_refused(tmp_path, src):
    q = tmp_path / "q"
    assert run("quantize", src, q, "--no-report", "--q-bits", 8).exit_code == 0
    result = run("quantize", q, tmp_path / "qq")
    assert result.exit_code == 1
    assert result.output == (f"Error: {q} is already quantized (8-bit, group size 64); quantize "
                             "the unquantized model it was made from.\n")
    assert only_entries(tmp_path) == ["q"]


def test_quantize_refuses_its_own_source_and_a_missing_one(tmp_path, src):
    result = run("quantize", src, src, "--force")
    assert result.exit_code == 1 and "is the source directory" in result.output
    missing = run("quantize", tmp_path / "nope", tmp_path / "out")
    assert missing.output == f"Error: Model directory {tmp_path / 'nope'} does not exist.\n"
    assert only_entries(tmp_path) == []


def test_quality_json_and_errors(tmp_path, src):
    q = tmp_path / "q"
    assert run("quantize", src, q, "--no-report").exit_code == 0
    result = run("quality", src, q, "--max-tokens", 32, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tokens"] == 32 and report["dtype"] == "float32"
    assert report["kl_mean"] > 0 and 0 <= report["top1_agreement"] <= 1
    assert report["quant"]["precision"] == "4-bit g64"
    assert report["quant"]["float16_ratio"] <= 0.30

    other = make_model_dir(tmp_path / "other", quantizable_config(num_layers=3))
    shapes = run("quality", src, other)
    assert shapes.exit_code == 1 and shapes.output.count("\n") == 1
    assert "have different shapes (num_transformer_layers 4 vs 3)" in shapes.output

    retok = tmp_path / "retok"
    shutil.copytree(q, retok)
    (retok / "tokenizer.model").write_bytes(b"not the same tokenizer")
    tokens = run("quality", src, retok)
    assert tokens.exit_code == 1 and "different tokenizers" in tokens.output

    swapped = run("quality", q, src)
    assert swapped.exit_code == 1 and swapped.output == (
        f"Error: {q} is quantized and {src} is not: the arguments look swapped; give the full "
        "model first (BASE_DIR QUANT_DIR).\n")


def test_perplexity_command(tmp_path, src):
    text = tmp_path / "t.txt"
    text.write_text("Mountains rise where plates collide, and rivers carve them down again.")
    result = run("perplexity", src, "--text", text)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Scored on the {text}:")
    assert "perplexity: " in result.output and "float16" in result.output
    as_json = json.loads(run("perplexity", src, "--text", text, "--json").output)
    assert as_json["perplexity"] > 1 and as_json["model"]["precision"] == "float16"
    piped = CliRunner().invoke(main, ["perplexity", str(src), "--text", "-", "--json"],
                               input=text.read_text())
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout)["perplexity"] == pytest.approx(as_json["perplexity"])
    assert json.loads(piped.stdout)["text"] == "text from stdin"
    for data, message in ((b"", "Error: The text on stdin is empty"),
                          (b"ok \xff", "Error: The text on stdin is not UTF-8 (at byte 3)")):
        bad = CliRunner().invoke(main, ["perplexity", str(src), "--text", "-"], input=data)
        assert bad.exit_code == 1 and bad.output.startswith(message), bad.output
    missing = run("perplexity", src, "--text", tmp_path / "none.txt")
    assert missing.exit_code == 1
    assert missing.output == (f"Error: {tmp_path / 'none.txt'} does not exist; --text takes a "
                              "UTF-8 text file.\n")


def tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def test_an_output_equal_to_inside_or_containing_the_source_is_refused(tmp_path, src):
    # The case: quantize m/p m/p/q4, then convert m/p/q4 m/p --force deleted both.
    base = tmp_path / "m" / "p"
    shutil.copytree(src, base)
    assert run("quantize", src, tmp_path / "q4", "--no-report").exit_code == 0
    shutil.copytree(tmp_path / "q4", base / "q4")
    before = tree(tmp_path)
    cases = [
        (("quantize", base, base / "q8"), "is inside the source directory"),
        (("quantize", base, base, "--force"), "is the source directory"),
        (("quantize", base, tmp_path / "m", "--force"), "contains the source directory"),
        (("quantize", base, tmp_path, "--force"), "contains the source directory"),
        (("convert", base / "q4", base, "--force"), "contains the source directory"),
        (("convert", base / "q4", base), "contains the source directory"),
        (("convert", base, base / "sub" / "out"), "is inside the source directory"),
        (("convert", base, base / ".." / "p", "--force"), "is the source directory"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
        assert tree(tmp_path) == before, args


def test_info_of_a_recipe_quantized_directory_is_readable(tmp_path, src):
    q = tmp_path / "q"
    assert run("quantize", src, q, "--no-report", "--q-recipe", "early").exit_code == 0
    text = run("info", q).output
    import re

    assert "{" not in text and not re.search(r"^ *\w+_\w+:", text, re.M)  # no raw keys
    assert "   quantization: 4-bit, group size 64; 4 layers at 6-bit\n" in text
    assert "     parameters: 4,810,112\n" in text
    weights = sum(p.stat().st_size for p in q.glob("*.safetensors"))
    assert f"weights on disk: {weights / 1e6:.1f} MB\n" in text
    # convert and quality say "weights on disk" too, and mean the same bytes.
    assert f"{weights / 1e6:.1f} MB of weights on disk" in run(
        "convert", src, tmp_path / "c", "-q", "--q-recipe", "early", "--no-report").output
