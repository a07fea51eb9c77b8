"""Run the cells of a sweep through our generation path (and, to compare, mlx-lm's).

Each group (a model at a precision) is built into a temporary model directory when it is
not a directory already, loaded with the real loader (that is the load time), then timed
per prompt length: warm-up first, EOS ignored, every repetition kept.
"""

import gc
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlx_slm.bench.bandwidth import kv_bytes_read, roofline_fraction
from mlx_slm.bench.engines import DraftedEngine, OurEngine
from mlx_slm.bench.plan import Cell, Group
from mlx_slm.bench.precisions import write_model_dir
from mlx_slm.bench.report import new_row
from mlx_slm.bench.timing import Clock, measure, summarize
from mlx_slm.errors import SlmError

# Failures worth a row instead of a crash: a broken model or MLX running out of memory.
CELL_FAILURES = (SlmError, RuntimeError, MemoryError)


@dataclass
class Settings:
    """How every cell is timed."""

    reps: int = 3
    warmup: int = 1
    seed: int = 0
    bandwidth_gbs: float | None = None
    bandwidth_source: str | None = None
    time_limit_s: float | None = None  # per engine and cell, checked at each token


def prompt_ids(length: int, config: dict, seed: int) -> list[int]:
    """A seeded prompt: BOS, then random ids (the ids do not change the work done)."""
    rng = random.Random(seed)
    vocab = config.get("vocab_size", 32000)
    return [config.get("bos_token_id", 1)] + [rng.randrange(3, vocab) for _ in range(length - 1)]


def run_sweep(groups: list[Group], settings: Settings, machine: dict,
              on_progress: Callable[[int, int, str], None] | None = None,
              clock: Clock = time.perf_counter, engines: list | None = None) -> Iterator[dict]:
    """Yield one row per cell, group by group; `on_progress(done, total, what)` as it goes.

    `engines[0]` is the one measured (default: ours); any others are compared with it.
    """
    engines = engines or [OurEngine()]
    total = sum(len(g.cells) for g in groups)
    done = 0

    def progress(what: str) -> None:
        if on_progress is not None:
            on_progress(done, total, what)

    for group in groups:
        results = _run_group(group, settings, engines, clock, progress)
        for cell in group.cells:
            yield _row(group, cell, results.get(id(cell), {}), settings, machine, engines)
            done += 1
            progress(f"{group.source.label} {group.precision.name} done")


def _run_group(group: Group, settings: Settings, engines: list, clock: Clock,
               progress: Callable[[str], None]) -> dict:
    """{id(cell): {engine name: measurements or {"error": message}}} for runnable cells."""
    import mlx.core as mx

    cells = [c for c in group.cells if c.skip_reason is None]
    if not cells:
        return {}
    results = {id(c): {} for c in cells}
    label = f"{group.source.label} {group.precision.name}"
    with tempfile.TemporaryDirectory(prefix="mlx-slm-bench-") as tmp:
        model_dir = group.source.model_dir
        if group.needs_copy:
            progress(f"{label}: writing the model")
            try:
                model_dir = _write_copy(group, Path(tmp) / "model", settings.seed)
            except CELL_FAILURES as err:
                failure = {"error": f"building the model failed: {err}"}
                return {id(c): {e.name: failure for e in engines} for c in cells}
            gc.collect()
            mx.clear_cache()
        for engine in engines:
            _run_engine(engine, model_dir, cells, results, settings, clock,
                        lambda what, e=engine: progress(f"{label} [{e.name}] {what}"))
            # Free that model before the next one loads, so the two never share memory.
            gc.collect()
            mx.clear_cache()
    return results


def _write_copy(group: Group, out_dir: Path, seed: int) -> Path:
    from mlx_slm.bench.precisions import model_at

    source = group.source
    model, config = model_at(source.config, source.float_weights(seed), group.precision,
                             source.label)
    return write_model_dir(out_dir, model, config)


def _run_engine(engine, model_dir: Path, cells: list[Cell], results: dict, settings: Settings,
                clock: Clock, progress: Callable[[str], None]) -> None:
    """Load with `engine` and time each cell; the model is freed when this returns."""
    progress("loading")
    try:
        start = clock()
        model = engine.load(model_dir)
        load_s = clock() - start
    except CELL_FAILURES as err:
        for cell in cells:
            results[id(cell)][engine.name] = {"error": f"{engine.name} could not load it: {err}"}
        return
    try:
        for cell in cells:
            progress(f"prompt {cell.prompt_tokens}, {settings.reps} runs")
            try:
                measured = _measure_cell(engine, model, cell, settings, clock)
            except CELL_FAILURES as err:
                measured = {"error": f"{engine.name}: {err}"}
            results[id(cell)][engine.name] = {"load_s": load_s, **measured}
    finally:
        engine.release()


def _measure_cell(engine, model, cell: Cell, settings: Settings, clock: Clock) -> dict:
    prompt = prompt_ids(cell.prompt_tokens, cell.source.config, settings.seed)
    rss_scope = engine.reset_peaks()
    limit = settings.time_limit_s
    # An engine in a child process can be stopped in the middle of a call, so it is given
    # the deadline itself; ours is checked at each token by `measure`.
    deadline = None if limit is None else time.monotonic() + limit

    def run(n: int):
        if getattr(engine, "stoppable", False):
            return engine.tokens(model, prompt, n, deadline=deadline)
        return engine.tokens(model, prompt, n)

    timings = measure(run, cell.prompt_tokens, cell.gen_tokens, settings.reps,
                      settings.warmup, clock, limit)
    return {"timings": timings, **engine.peaks(), "peak_rss_scope": rss_scope,
            **engine.sizes(model),
            "draft": engine.run_stats() if isinstance(engine, DraftedEngine) else None}


def _row(group: Group, cell: Cell, result: dict, settings: Settings, machine: dict,
         engines: list) -> dict:
    row = new_row(
        model=group.source.label,
        source="synthetic" if group.source.synthetic else str(group.source.model_dir),
        precision=group.precision.name,
        dtype=group.precision.dtype,
        parameters=group.parameters,
        weight_bytes=group.weight_bytes or None,
        bits_per_weight=8 * group.weight_bytes / group.parameters if group.weight_bytes else None,
        prompt_tokens=cell.prompt_tokens,
        gen_tokens=cell.gen_tokens,
        repetitions=settings.reps,
        warmup_runs=settings.warmup,
        bandwidth_gbs=settings.bandwidth_gbs,
        bandwidth_source=settings.bandwidth_source,
        **machine,
    )
    if cell.skip_reason is not None:
        row.update(status="skipped", reason=cell.skip_reason)
        return row
    ours = result[engines[0].name]
    if "error" in ours:
        row.update(status="failed", reason=ours["error"])
        return row
    row.update(status="ok", **_our_fields(ours, group, cell, settings))
    notes = [_cut_short(engines[0].name, ours, settings)]
    for engine in engines[1:]:
        drafted = isinstance(engine, DraftedEngine)
        if not drafted:
            row["mlx_lm_version"] = engine.version
        theirs = result[engine.name]
        if "error" in theirs:
            notes.append(theirs["error"])
            continue
        row.update(engine.row_fields(theirs, row) if drafted else _peer_fields(theirs, row))
        notes.append(_cut_short(engine.name, theirs, settings))
    row["reason"] = "; ".join(n for n in notes if n) or None
    return row


def _cut_short(name: str, measured: dict, settings: Settings) -> str | None:
    done = len(measured["timings"])
    if done == settings.reps:
        return None
    return f"{name}: {done} of {settings.reps} runs within the {settings.time_limit_s:g} s limit"


def _our_fields(ours: dict, group: Group, cell: Cell, settings: Settings) -> dict:
    fields = {
        # As loaded (the loader may lay weights out differently from the files).
        "weight_bytes": ours["weight_bytes"],
        "bits_per_weight": 8 * ours["weight_bytes"] / group.parameters,
        "load_s": ours["load_s"],
        **summarize(ours["timings"]),
        "peak_memory_bytes": ours["peak_memory_bytes"],
        "peak_rss_bytes": ours["peak_rss_bytes"],
        "peak_rss_scope": ours["peak_rss_scope"],
        "repetitions": len(ours["timings"]),
        "runs": [{"ttft_s": t.ttft_s, "generation_s": t.generation_s,
                  "prompt_tps": t.prompt_tps, "gen_tps": t.generation_tps}
                 for t in ours["timings"]],
    }
    kv = kv_bytes_read(cell.source.config, cell.prompt_tokens, cell.gen_tokens,
                       ours["kv_itemsize"])
    fields["bytes_per_token"] = ours["weight_bytes_read"] + kv
    if settings.bandwidth_gbs:
        fields["roofline_fraction"] = roofline_fraction(
            fields["bytes_per_token"], fields["gen_tps"], settings.bandwidth_gbs)
    return fields


def _peer_fields(theirs: dict, row: dict) -> dict:
    summary = summarize(theirs["timings"])

    def ratio(ours, other):
        return ours / other if other else None

    return {
        "mlx_lm_load_s": theirs["load_s"],
        "mlx_lm_ttft_s": summary["ttft_s"],
        "mlx_lm_prompt_tps": summary["prompt_tps"],
        "mlx_lm_gen_tps": summary["gen_tps"],
        "mlx_lm_gen_tps_stdev": summary["gen_tps_stdev"],
        "mlx_lm_peak_memory_bytes": theirs["peak_memory_bytes"],
        "mlx_lm_peak_rss_bytes": theirs["peak_rss_bytes"],
        "prompt_tps_ratio": ratio(row["prompt_tps"], summary["prompt_tps"]),
        "gen_tps_ratio": ratio(row["gen_tps"], summary["gen_tps"]),
    }
