"""`mlx-slm bench` end to end on tiny shapes: table, JSON, CSV, plot, errors, mlx-lm."""

import csv
import json
import sys

import pytest
from click.testing import CliRunner

from mlx_slm.backend import active_backend
from mlx_slm.commands.cli import main
from mlx_slm.store.files import write_json
from mlx_slm.synthetic import tiny_config

# Widths divisible by the quantization group (64), so the quantized precisions apply.
QUANTIZABLE = dict(model_dim=128, head_dim=32, ffn_dim_divisor=64, vocab_size=1000)
FAST = ["-p", "8", "-n", "4", "-r", "2", "--warmup", "1", "--bandwidth", "10"]


@pytest.fixture
def tiny_json(tmp_path):
    path = tmp_path / "tiny.json"
    write_json(path, tiny_config(**QUANTIZABLE))
    return path


def run(args):
    return CliRunner().invoke(main, ["bench", *args])


def test_synthetic_config_sweep_writes_table_json_csv_and_plot(tmp_path, tiny_json):
    out = tmp_path / "out"
    out.mkdir()
    result = run(["--synthetic", str(tiny_json), "-P", "float32", "-P", "4bit", *FAST,
                  "--json", str(out / "b.json"), "--csv", str(out / "b.csv"),
                  "--plot", str(out / "b.png")])
    assert result.exit_code == 0, result.output
    assert f"{active_backend()} backend" in result.output
    assert "| tiny  | float32   | 8" in result.output
    rows = json.loads((out / "b.json").read_text())["rows"]
    assert [(r["model"], r["precision"], r["status"]) for r in rows] == [
        ("tiny", "float32", "ok"), ("tiny", "4bit", "ok")]
    assert all(r["gen_tokens"] == 4 and len(r["runs"]) == 2 for r in rows)
    assert rows[1]["weight_bytes"] < rows[0]["weight_bytes"] / 4
    with open(out / "b.csv") as f:
        assert [r["precision"] for r in csv.DictReader(f)] == ["float32", "4bit"]
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["b.csv", "b.json", "b.png"]


def test_json_to_stdout_moves_the_table_to_stderr(tiny_json):
    result = run(["--synthetic", str(tiny_json), "-P", "bfloat16", *FAST, "--json", "-"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"][0]["dtype"] == "bfloat16"
    assert "| tiny " in result.stderr


def test_model_directory_at_its_stored_precision_and_another(model_dir):
    result = run(["--model", str(model_dir), *FAST, "--json", "-"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert (row["model"], row["precision"], row["source"]) == ("tiny", "float32", str(model_dir))
    result = run(["--model", str(model_dir), "-P", "bfloat16", *FAST, "--json", "-"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert (row["precision"], row["status"], row["bits_per_weight"]) == ("bfloat16", "ok", 16)


def test_existing_output_is_not_clobbered(tmp_path, tiny_json):
    existing = tmp_path / "b.json"
    existing.write_text("keep")
    result = run(["--synthetic", str(tiny_json), *FAST, "--json", str(existing)])
    assert result.exit_code == 1
    assert result.output == f"Error: {existing} already exists; choose another name or remove it.\n"
    assert existing.read_text() == "keep"


@pytest.mark.parametrize("args, message", [
    (["--synthetic", "2B"], "Error: Unknown OpenELM size '2B': choose one of 270M, 450M, 1.1B, "
                            "3B (optionally -Instruct).\n"),
    (["-P", "float8"], "Error: Unknown precision 'float8': choose from float32, float16, "
                       "bfloat16, 8bit, 4bit"),
    (["--model", "/nonexistent/dir"], "Error: Model directory /nonexistent/dir does not exist.\n"),
])
def test_user_errors_are_one_line(tiny_json, args, message):
    if "--synthetic" not in args and "--model" not in args:
        args = ["--synthetic", str(tiny_json), *args]
    result = run([*args, *FAST])
    assert result.exit_code == 1 and result.output.startswith(message)
    assert "Traceback" not in result.output


def test_compare_without_mlx_lm_says_how_to_install(tiny_json, monkeypatch):
    for name in ("mlx_lm", "mlx_lm.utils", "mlx_lm.generate"):
        monkeypatch.setitem(sys.modules, name, None)  # what an absent package looks like
    result = run(["--synthetic", str(tiny_json), *FAST, "--compare", "mlx-lm"])
    assert result.exit_code == 1
    assert result.output == "Error: --compare mlx-lm needs mlx-lm: pip install mlx-lm\n"


def test_compare_with_mlx_lm_reports_ratios(tiny_json):
    pytest.importorskip("mlx_lm")
    result = run(["--synthetic", str(tiny_json), "-P", "float32", "-P", "8bit", *FAST,
                  "--compare", "mlx-lm", "--json", "-"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    for row in rows:
        assert row["status"] == "ok" and row["reason"] is None, row["reason"]
        assert row["gen_tps_ratio"] == pytest.approx(row["gen_tps"] / row["mlx_lm_gen_tps"])
        assert row["prompt_tps_ratio"] == pytest.approx(
            row["prompt_tps"] / row["mlx_lm_prompt_tps"])
        assert row["mlx_lm_version"]


def test_outputs_are_checked_before_the_sweep(tmp_path, tiny_json):
    result = run(["--synthetic", str(tiny_json), *FAST, "--plot", str(tmp_path / "plot")])
    assert result.exit_code == 1 and "Plan:" not in result.output
    assert result.output.startswith("Error: --plot ") and "image extension (.png" in result.output
    assert len(result.output.splitlines()) == 1


def test_a_read_only_folder_is_refused_before_the_sweep(tmp_path, tiny_json):
    import os

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("this user (root) writes into read-only folders")
    for option, name in (("--json", "b.json"), ("--csv", "b.csv"), ("--plot", "b.png")):
        result = run(["--synthetic", str(tiny_json), *FAST, option, str(locked / name)])
        assert result.exit_code == 1 and "Plan:" not in result.output
        assert result.output.startswith(f"Error: Cannot write {locked / name}: Permission denied")


def test_the_plan_and_an_estimate_come_first(tiny_json):
    result = run(["--synthetic", str(tiny_json), "-P", "float32", "-P", "bfloat16", *FAST])
    assert result.exit_code == 0, result.output
    plan = result.stderr.splitlines()[0]
    assert plan.startswith("Plan: 2 cells (1 model(s) x 2 precision(s) x 1 prompt length(s)), "
                           "0 to skip; each cell: 1 warm-up + 2 timed run(s). Estimate: at least")


def test_a_sweep_with_nothing_measured_fails_with_the_reasons(tiny_json):
    result = run(["--synthetic", str(tiny_json), "-P", "float32", *FAST[2:], "-p", "5000"])
    assert result.exit_code == 1
    assert "- skipped: tiny float32, prompt 5000: prompt + generation" in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: No cell was measured")


def test_ctrl_c_keeps_the_cells_completed(tmp_path, tiny_json, monkeypatch):
    from mlx_slm.bench import runner

    real = runner._run_group
    calls = []

    def interrupted_second_time(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(runner, "_run_group", interrupted_second_time)
    out = tmp_path / "b.json"
    result = run(["--synthetic", str(tiny_json), "-P", "float32", "-P", "bfloat16", *FAST,
                  "--json", str(out)])
    assert result.exit_code == 130
    assert "[interrupted: 1 cell(s) completed]" in result.stderr
    assert "| tiny  | float32" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["precision"], r["status"]) for r in rows] == [("float32", "ok")]


@pytest.mark.parametrize("args, sizes, lengths", [
    ([], ("270M",), (128,)),  # plain `mlx-slm bench`: the quick sweep
    (["-p", "64"], ("270M",), (64,)),
    (["-s", "all"], ("all",), (128, 1024)),  # the full one, by name
])
def test_plain_bench_is_the_quick_sweep(monkeypatch, args, sizes, lengths):
    import mlx_slm.bench.sweep as sweep

    seen = []

    def fake_iter_bench(request, **kwargs):
        seen.append(request)
        return iter(())

    monkeypatch.setattr(sweep, "iter_bench", fake_iter_bench)
    result = run(args)
    assert result.exit_code == 1 and "No cell was measured" in result.stderr
    assert seen[0].synthetic == sizes and tuple(seen[0].prompt_lengths) == lengths
    assert ("[the quick sweep" in result.stderr) == (sizes == ("270M",))
