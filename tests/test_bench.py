"""`mlx-slm bench` arithmetic on fake clocks: timings, medians, roofline, warm-up, EOS,
skipping, and the stable row schema."""

import json
import math
import statistics

import mlx.core as mx
import pytest

from mlx_slm.backend import active_backend
from mlx_slm.bench import bandwidth, report
from mlx_slm.bench.engines import OurEngine
from mlx_slm.bench.plan import Source, directory_source, needed_bytes, plan
from mlx_slm.bench.precisions import Precision, model_at, parameter_bytes, write_model_dir
from mlx_slm.bench.runner import Settings, run_sweep
from mlx_slm.bench.timing import (
    WARMUP_TOKENS,
    TimeLimitExceeded,
    measure,
    spread,
    time_run,
)
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model
from mlx_slm.sizes import kv_cache_bytes
from mlx_slm.synthetic import published_config, random_weights, tiny_config

MACHINE = {"backend": "cpu", "blas": "openblas (x)", "kernels": "native avx2 2 threads",
           "mlx_version": "0.0", "mlx_slm_version": "0",
           "platform": "test", "cpu": "test cpu", "cores": 2, "ram_bytes": 8 * 10**9,
           "load_average": 0.1, "date": "2025-01-01T00:00:00+00:00"}
EXPECTED_KEYS = {
    "model", "source", "precision", "dtype", "parameters", "weight_bytes", "bits_per_weight",
    "prompt_tokens", "gen_tokens", "repetitions", "warmup_runs", "status", "reason",
    "load_s", "ttft_s", "ttft_s_stdev", "prompt_tps", "prompt_tps_stdev", "gen_tps",
    "gen_tps_stdev", "gen_tps_min", "gen_tps_max", "peak_memory_bytes", "peak_rss_bytes",
    "peak_rss_scope", "bytes_per_token", "bandwidth_gbs", "bandwidth_source",
    "roofline_fraction", "mlx_lm_version", "mlx_lm_load_s", "mlx_lm_ttft_s",
    "mlx_lm_prompt_tps", "mlx_lm_gen_tps", "mlx_lm_gen_tps_stdev", "mlx_lm_peak_memory_bytes",
    "mlx_lm_peak_rss_bytes", "prompt_tps_ratio",
    "gen_tps_ratio", "draft_model", "num_draft_tokens", "draft_gen_tps", "draft_gen_tps_stdev",
    "draft_speedup", "acceptance_rate", "mean_accepted", "drafted", "accepted",
    "backend", "blas", "kernels", "mlx_version", "mlx_slm_version", "platform", "cpu",
    "cores", "ram_bytes", "load_average", "date", "runs",
}


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def timed_tokens(clock, n, prompt_s, step_s):
    """A lazy generator that takes `prompt_s` to its first token and `step_s` per next one."""
    clock.now += prompt_s
    yield 0
    for _ in range(n - 1):
        clock.now += step_s
        yield 0


def test_time_run_splits_prompt_and_generation_clocks():
    clock = FakeClock()
    timing = time_run(timed_tokens(clock, 9, 0.5, 0.125), prompt_tokens=100, clock=clock)
    assert (timing.generated, timing.ttft_s, timing.generation_s) == (9, 0.5, 1.0)
    assert timing.prompt_tps == 200.0
    assert timing.generation_tps == 8.0  # 8 tokens after the first, in 1 s


def test_spread_is_median_sample_stdev_min_max():
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)
    assert s.stdev == pytest.approx(math.sqrt(50 / 3))
    assert spread([4.0]).stdev is None  # one run has no spread (not ±0.0)


def test_warmup_runs_are_not_timed():
    clock = FakeClock()
    requested = []
    steps = iter([1000.0, 0.25, 0.5, 0.125])  # the first run (warm-up) is very slow

    def run(n):
        requested.append(n)
        return timed_tokens(clock, n, 0.25, next(steps))

    timings = measure(run, prompt_tokens=10, gen_tokens=20, reps=3, warmup=1, clock=clock)
    assert requested == [min(20, WARMUP_TOKENS), 20, 20, 20]
    assert [t.generation_tps for t in timings] == [19 / (19 * 0.25), 19 / 9.5, 19 / 2.375]
    assert spread(t.generation_tps for t in timings).median == 4.0


def test_a_run_that_stops_short_is_an_error():
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="generated 3 of 5 tokens"):
        measure(lambda n: timed_tokens(clock, 3, 0.1, 0.1), 4, 5, reps=1, warmup=0, clock=clock)


def test_a_cell_past_its_time_limit_is_stopped_at_the_next_token():
    clock = FakeClock()
    produced = []

    def run(n):
        for token in timed_tokens(clock, n, 1.0, 2.0):
            produced.append(token)
            yield token

    with pytest.raises(TimeLimitExceeded, match=r"^stopped after 10 s \(--time-limit\)$"):
        measure(run, 4, 100, reps=3, warmup=1, clock=clock, time_limit=10.0)
    # Tokens come at t = 1, 3, 5, ...: the warm-up's sixth (t = 11) is the first past 10.
    assert len(produced) == 6 and clock.now == 11.0
    # Runs of 5 tokens take 1 + 4 x 2 = 9 s: the warm-up and two timed runs fit in 30 s, the
    # third is abandoned at its third token (27 + 5 > 30), and the two completed are kept.
    produced.clear()
    timings = measure(run, 4, 5, reps=3, warmup=1, clock=clock, time_limit=30.0)
    assert [t.generation_tps for t in timings] == [0.5, 0.5] and len(produced) == 18


def always_eos(model):
    """Make a real model predict EOS (id 2) at every position."""
    vocab = model.args.vocab_size

    def logits(hidden):
        return mx.where(mx.arange(vocab) == 2, 10.0, -10.0) + 0 * hidden[..., :1]

    model.logits = logits
    return model


def test_eos_is_ignored(hub_checkpoint):
    model = always_eos(load_model(hub_checkpoint)[0])
    assert list(generate_tokens(model, [1, 5, 6], max_tokens=6, stop_ids=(2,))) == []
    engine = OurEngine()
    assert list(engine.tokens(model, [1, 5, 6], 6)) == [2] * 6
    timings = measure(lambda n: engine.tokens(model, [1, 5, 6], n), 3, 6, reps=2, warmup=1)
    assert [t.generated for t in timings] == [6, 6]


def test_roofline_arithmetic(hub_checkpoint):
    assert bandwidth.roofline_fraction(2e9, 10.0, 40.0) == 0.5
    config = tiny_config()
    # Timed tokens 2..n of a 100-token prompt see 101..109 positions: mean 105 = 100 + 10/2.
    assert bandwidth.kv_bytes_read(config, 100, 10, 2) == kv_cache_bytes(config, 105, 2)
    assert kv_cache_bytes(config, 105, 2) == 2 * sum(config["num_kv_heads"]) * 16 * 105 * 2
    model, _ = load_model(hub_checkpoint)
    assert bandwidth.weight_bytes_read(model) == parameter_bytes(model)


def test_untied_embedding_is_read_one_row_per_token(tmp_path):
    config = tiny_config(vocab_size=500, share_input_output_layers=False)
    model, _ = model_at(config, random_weights(config), Precision("float32", "float32"), "x")
    embedding = 500 * 64 * 4
    assert bandwidth.weight_bytes_read(model) == parameter_bytes(model) - embedding + 64 * 4


def test_apple_chips_and_binned_max_chips():
    assert bandwidth.apple_chip_bandwidth("Apple M2 Pro") == ("M2 Pro", 200.0)
    assert bandwidth.apple_chip_bandwidth("Apple M1") == ("M1", 68.25)
    assert bandwidth.apple_chip_bandwidth("Apple M3 Max", 14) == ("M3 Max", 300.0)
    assert bandwidth.apple_chip_bandwidth("Apple M4 Max", 16) == ("M4 Max", 546.0)
    assert bandwidth.apple_chip_bandwidth("Apple M4 Max") == ("M4 Max", 546.0)
    assert bandwidth.apple_chip_bandwidth("AMD EPYC 7B13") is None


def test_bandwidth_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SLM_HOME", str(tmp_path))
    monkeypatch.setattr(bandwidth.sys, "platform", "linux")
    calls = []

    def fake_measure():
        calls.append(1)
        return 31.5

    assert bandwidth.resolve_bandwidth(measure=fake_measure) == (31.5, "measured now")
    gbs, where = bandwidth.resolve_bandwidth(measure=fake_measure)
    assert (gbs, len(calls)) == (31.5, 1) and where.startswith("measured 20")
    assert json.loads((tmp_path / "bandwidth.json").read_text())
    assert bandwidth.resolve_bandwidth(12.0, measure=fake_measure) == (12.0, "--bandwidth")


def test_apple_table_used_on_macos(monkeypatch):
    monkeypatch.setattr(bandwidth.sys, "platform", "darwin")
    monkeypatch.setattr(bandwidth, "cpu_brand", lambda: "Apple M4 Pro")
    assert bandwidth.resolve_bandwidth(measure=pytest.fail) == (
        273.0, "Apple's figure for the M4 Pro")


def test_measured_bandwidth_is_positive():
    # GB/s: a real memory system, however busy, is between these; bytes/s or MB/s is not.
    assert 0.01 < bandwidth.measure_bandwidth(buffer_bytes=4 * 2**20, repeats=2) < 5000


def test_cells_that_do_not_fit_are_skipped_with_the_figures():
    source = Source("270M", published_config("270M"))
    groups = plan([source], ["float32", "4bit"], [128, 2000], 64, available=int(0.5e9))
    reasons = [[c.skip_reason for c in g.cells] for g in groups]
    f32 = needed_bytes(source.config, groups[0].weight_bytes, 192)
    assert reasons[0][0] == (f"needs about {f32 / 1e9:.1f} GB (weights + KV cache) but "
                             "0.5 GB is available")
    assert reasons[0][1] == reasons[1][1] == (
        "prompt + generation (2064 tokens) exceed the 2048-token context")
    assert reasons[1][0] is None  # 4-bit 270M: 0.15 GB of weights
    assert groups[1].weight_bytes == 152_797_696
    forced = plan([source], ["float32"], [128], 64, available=int(0.5e9), force=True)
    assert forced[0].cells[0].skip_reason is None
    no_disk = plan([source], ["float32"], [128], 64, free_disk=10**8, temp_dir="/tmpx")
    assert no_disk[0].cells[0].skip_reason == (
        "its 1.1 GB model copy does not fit in the 0.1 GB free in /tmpx")


def test_a_precision_that_cannot_be_built_is_skipped():
    # tiny_config's 32-wide FFN layer cannot be quantized in groups of 64.
    groups = plan([Source("tiny", tiny_config())], ["4bit"], [8], 4)
    # The builder's own message follows (MLX's, or quant's once it validates widths).
    reason = groups[0].cells[0].skip_reason
    assert reason.startswith("cannot be built at 4bit: ") and "64" in reason
    # bench has no --q-group-size: the advice is what works (issue 23, case 11).
    assert "choose --q-group-size" not in reason
    assert reason.endswith("(bench quantizes with group size 64); quantize it with mlx-slm "
                           "quantize --q-group-size 32 and bench that directory with -m")


QUANTIZABLE = dict(model_dim=128, head_dim=32, ffn_dim_divisor=64, vocab_size=1000)


def test_a_quantized_directory_runs_at_its_own_precision_only(tmp_path):
    config = tiny_config(**QUANTIZABLE)
    model, qconfig = model_at(config, random_weights(config), Precision("4bit", "float16", 4),
                              "tiny")
    write_model_dir(tmp_path / "q4", model, qconfig)
    source = directory_source(str(tmp_path / "q4"))
    groups = plan([source], None, [8], 4)
    assert [g.precision.name for g in groups] == ["4bit"] and not groups[0].needs_copy
    groups = plan([source], ["4bit", "bfloat16"], [8], 4)
    assert groups[0].cells[0].skip_reason is None
    assert groups[1].cells[0].skip_reason == (
        f"{tmp_path / 'q4'} is stored as 4bit; a quantized directory is benchmarked at its "
        "own precision only")


class FakeEngine(OurEngine):
    """Our real generation path, on a fake clock: every token costs a scripted time."""

    name = "mlx-slm"

    def __init__(self, clock, steps, load_s=2.0, prompt_s_per_token=0.001):
        super().__init__()
        self.clock, self.steps, self.load_s = clock, iter(steps), load_s
        self.prompt_s_per_token = prompt_s_per_token

    def load(self, model_dir):
        self.clock.now += self.load_s
        return super().load(model_dir)

    def tokens(self, model, prompt, n):
        real = super().tokens(model, prompt, n)
        step = next(self.steps)

        def paced():
            for i, token in enumerate(real):
                self.clock.now += len(prompt) * self.prompt_s_per_token if i == 0 else step
                yield token

        return paced()


def test_row_arithmetic_on_a_fake_clock(model_dir):
    clock = FakeClock()
    # Per cell: one warm-up (absurdly slow), then three timed runs of 0.1, 0.2, 0.05 s/token.
    engine = FakeEngine(clock, [99.0, 0.1, 0.2, 0.05] * 2)
    groups = plan([directory_source(str(model_dir))], None, [250, 500], 5)
    settings = Settings(reps=3, warmup=1, bandwidth_gbs=0.001, bandwidth_source="--bandwidth")
    rows = list(run_sweep(groups, settings, MACHINE, clock=clock, engines=[engine]))
    assert [r["prompt_tokens"] for r in rows] == [250, 500]
    row = rows[0]
    assert set(row) == EXPECTED_KEYS and row["status"] == "ok"
    assert row["load_s"] == 2.0
    assert row["ttft_s"] == pytest.approx(0.25) and row["ttft_s_stdev"] == pytest.approx(0)
    assert row["prompt_tps"] == pytest.approx(1000.0)
    assert row["gen_tps"] == pytest.approx(10.0)
    assert (row["gen_tps_min"], row["gen_tps_max"]) == pytest.approx((5.0, 20.0))
    assert row["gen_tps_stdev"] == pytest.approx(statistics.stdev([10.0, 5.0, 20.0]))
    assert [r["gen_tps"] for r in row["runs"]] == pytest.approx([10.0, 5.0, 20.0])
    model, config = load_model(model_dir)
    kv = kv_cache_bytes(config, 250 + 5 / 2, 4)
    assert row["bytes_per_token"] == parameter_bytes(model) + kv
    assert row["roofline_fraction"] == pytest.approx(row["bytes_per_token"] * 10.0 / 1e6)
    assert row["weight_bytes"] == parameter_bytes(model)
    assert row["bits_per_weight"] == pytest.approx(32.0)
    assert row["peak_memory_bytes"] >= parameter_bytes(model)
    assert row["peak_rss_bytes"] > 0 and row["peak_rss_scope"] in ("cell", "process")
    assert (row["model"], row["precision"], row["source"]) == ("tiny", "float32", str(model_dir))
    assert row["backend"] == active_backend() and row["mlx_lm_gen_tps"] is None


def test_skipped_rows_keep_the_schema_and_outputs_are_stable():
    source = Source("270M", published_config("270M"))
    groups = plan([source], ["float32"], [128], 8, available=10**6)
    rows = list(run_sweep(groups, Settings(), MACHINE, engines=[OurEngine()]))
    assert set(rows[0]) == EXPECTED_KEYS
    assert rows[0]["status"] == "skipped" and rows[0]["reason"].startswith("needs about")
    document = json.loads(report.to_json(rows))
    assert document["schema_version"] == 3 and document["rows"] == rows
    header = report.to_csv(rows).splitlines()[0].split(",")
    assert header == [k for k in report.ROW_KEYS if k != "runs"]
    assert set(header) == EXPECTED_KEYS - {"runs"}
    table = report.to_markdown(rows)
    assert "- skipped: 270M float32, prompt 128: needs about" in table
    assert table.startswith("cpu backend, BLAS openblas, kernels native avx2 2 threads | MLX 0.0 | "
                            "test cpu, 2 cores, 8 GB RAM")
    with pytest.raises(KeyError, match="not in the benchmark row schema: tok_s"):
        report.new_row(tok_s=1.0)


def test_a_slow_peer_leaves_our_row_intact_with_a_note(model_dir):
    clock = FakeClock()
    ours = FakeEngine(clock, [0.1] * 4)
    peer = FakeEngine(clock, [50.0] * 4)
    peer.name, peer.version = "mlx-lm", "9.9"
    groups = plan([directory_source(str(model_dir))], None, [16], 5)
    settings = Settings(reps=3, warmup=1, time_limit_s=30.0)
    row = next(run_sweep(groups, settings, MACHINE, clock=clock, engines=[ours, peer]))
    assert row["status"] == "ok" and row["gen_tps"] == pytest.approx(10.0)
    assert row["reason"] == "mlx-lm: stopped after 30 s (--time-limit)"
    assert row["repetitions"] == 3
    assert row["mlx_lm_version"] == "9.9" and row["mlx_lm_gen_tps"] is None
    assert "- note: tiny float32, prompt 16: mlx-lm: stopped after 30 s" in report.to_markdown(
        [row])


def test_runs_cut_short_by_the_time_limit_are_counted_and_noted(model_dir):
    clock = FakeClock()
    ours = FakeEngine(clock, [1.0, 1.0, 1.0, 100.0])  # the third timed run is too slow
    groups = plan([directory_source(str(model_dir))], None, [16], 5)
    settings = Settings(reps=3, warmup=1, time_limit_s=30.0)
    row = next(run_sweep(groups, settings, MACHINE, clock=clock, engines=[ours]))
    assert row["status"] == "ok" and row["repetitions"] == 2 and len(row["runs"]) == 2
    assert row["gen_tps"] == pytest.approx(1.0)
    assert row["reason"] == "mlx-slm: 2 of 3 runs within the 30 s limit"


def test_mixed_recipes_are_found_and_passed_to_quantize(monkeypatch):
    import sys
    import types

    import mlx_slm.quant as quant
    from mlx_slm.bench import precisions

    monkeypatch.setitem(sys.modules, "mlx_slm.recipes",
                        types.SimpleNamespace(RECIPES={"early": None, "late": None}))
    calls = []
    monkeypatch.setattr(quant, "quantize", lambda model, **kw: calls.append(kw) or {"bits": 4})
    assert precisions.precision_names()[-2:] == ["4bit-early", "4bit-late"]
    config = tiny_config(**QUANTIZABLE)
    prec = precisions.precision("4bit-late", config)
    assert prec == Precision("4bit-late", "float16", bits=4, recipe="late")
    _, written = model_at(config, random_weights(config), prec, "tiny")
    assert calls == [{"bits": 4, "group_size": 64, "recipe": "late"}]
    assert written["quantization"] == {"bits": 4}


def cell(model, precision, status="ok", **fields):
    values = dict(gen_tps=10.0, gen_tps_stdev=None, prompt_tps=100.0, prompt_tps_stdev=None,
                  peak_memory_bytes=10**8, load_s=0.1, ttft_s=0.01, gen_tokens=4)
    return report.new_row(model=model, precision=precision, status=status, prompt_tokens=8,
                          backend="cpu", blas="openblas x", kernels="on", mlx_version="0",
                          cpu="cpu", cores=2, ram_bytes=0, date="2026-01-01T00:00",
                          bandwidth_gbs=None, **{**(values if status == "ok" else {}), **fields})


def test_one_run_shows_no_spread():
    table = report.to_markdown([cell("270M", "float32"),
                                cell("270M", "bfloat16", gen_tps_stdev=1.5)])
    assert "±0.0" not in table and "10.0 ±1.5" in table
    assert "| 10.0      |" in table


def test_the_plot_labels_the_cells_that_did_not_run(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from mlx_slm.bench.plot import plot

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: (figures.append(fig), close(fig)))
    rows = [cell("270M", "float32"), cell("270M", "4bit", "skipped", reason="no room"),
            cell("1.1B", "float32", "failed", reason="boom"), cell("1.1B", "4bit")]
    plot(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 0
    for axis in figures[0].axes:
        labels = sorted(t.get_text() for t in axis.texts)
        assert labels == ["4bit skipped", "float32 failed"]


def test_machine_info_records_load_and_cpu_and_high_load_warns():
    from mlx_slm.bench.machine import QUIET_LOAD, load_warning, machine_info

    info = machine_info()
    assert info["cpu"] and (info["load_average"] is None or info["load_average"] >= 0)
    assert load_warning(None) is None and load_warning(QUIET_LOAD) is None
    assert f"{QUIET_LOAD + 1:.2f}" in load_warning(QUIET_LOAD + 1)
