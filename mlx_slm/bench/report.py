"""Benchmark rows and their outputs: JSON and CSV for machines, a Markdown table for people.

The row schema is fixed (ROW_KEYS): every row has every key, None where a value does not
apply, so tools reading the JSON or CSV never meet a missing column.
"""

import csv
import io
import json
from pathlib import Path

from mlx_slm.apps.table import markdown_table
from mlx_slm.errors import SlmError
from mlx_slm.memory import GB

SCHEMA_VERSION = 3  # 2: mlx-lm's peak memory and RSS per row; 3: speculative decoding
ROW_KEYS = (
    # what was measured
    "model", "source", "precision", "dtype", "parameters", "weight_bytes", "bits_per_weight",
    "prompt_tokens", "gen_tokens", "repetitions", "warmup_runs",
    # outcome: ok, skipped or failed, and why
    "status", "reason",
    # our generation path: medians over the repetitions, with their spread
    "load_s", "ttft_s", "ttft_s_stdev", "prompt_tps", "prompt_tps_stdev",
    "gen_tps", "gen_tps_stdev", "gen_tps_min", "gen_tps_max",
    "peak_memory_bytes", "peak_rss_bytes", "peak_rss_scope",
    "bytes_per_token", "bandwidth_gbs", "bandwidth_source", "roofline_fraction",
    # mlx-lm on the same files, and ours / theirs
    "mlx_lm_version", "mlx_lm_load_s", "mlx_lm_ttft_s", "mlx_lm_prompt_tps", "mlx_lm_gen_tps",
    "mlx_lm_gen_tps_stdev", "mlx_lm_peak_memory_bytes", "mlx_lm_peak_rss_bytes",
    "prompt_tps_ratio", "gen_tps_ratio",
    # the same cells decoded with a draft model (speculative decoding), and draft / plain
    "draft_model", "num_draft_tokens", "draft_gen_tps", "draft_gen_tps_stdev", "draft_speedup",
    "acceptance_rate", "mean_accepted", "drafted", "accepted",
    # where it ran
    "backend", "blas", "kernels", "mlx_version", "mlx_slm_version", "platform", "cpu", "cores",
    "ram_bytes", "load_average", "date",
    # every timed repetition (JSON only)
    "runs",
)
CSV_KEYS = tuple(k for k in ROW_KEYS if k != "runs")


def new_row(**fields) -> dict:
    """A row with every key of the schema; naming a key outside it is a bug."""
    unknown = set(fields) - set(ROW_KEYS)
    if unknown:
        raise KeyError(f"not in the benchmark row schema: {', '.join(sorted(unknown))}")
    return {**dict.fromkeys(ROW_KEYS), **fields}


def to_json(rows: list[dict]) -> str:
    """The rows as one JSON document: {"schema_version": 2, "rows": [...]}."""
    return json.dumps({"schema_version": SCHEMA_VERSION, "rows": rows}, indent=2) + "\n"


def to_csv(rows: list[dict]) -> str:
    """The rows as CSV with a header, in CSV_KEYS order (every scalar key)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _gb(value) -> str:
    return "" if value is None else f"{value / GB:.2f}"


def _with_spread(median, stdev) -> str:
    if median is None:
        return ""
    return f"{median:.1f}" if stdev is None else f"{median:.1f} ±{stdev:.1f}"  # None: one run


def header(rows: list[dict]) -> str:
    """One line saying what produced the numbers: backend, BLAS, MLX, machine, date."""
    if not rows:
        return ""
    r = rows[0]
    blas = (f", BLAS {r['blas'].split(' ')[0]}, kernels {r['kernels']}"
            if r["backend"] == "cpu" else "")
    ram = f", {r['ram_bytes'] / GB:.0f} GB RAM" if r["ram_bytes"] else ""
    load = f", load {r['load_average']:.2f}" if r["load_average"] is not None else ""
    line = (f"{r['backend']} backend{blas} | MLX {r['mlx_version']} | {r['cpu']}, "
            f"{r['cores']} cores{ram}{load} | {r['date']}")
    if r["bandwidth_gbs"]:
        line += f" | bandwidth {r['bandwidth_gbs']:.0f} GB/s ({r['bandwidth_source']})"
    if r["mlx_lm_version"]:
        line += f" | mlx-lm {r['mlx_lm_version']}"
    return line


def to_markdown(rows: list[dict]) -> str:
    """The readable table: a header line, one table row per measured cell, then the cells
    that were skipped or failed with their reasons."""
    ok = [r for r in rows if r["status"] == "ok"]
    compare = any(r["mlx_lm_gen_tps"] is not None for r in ok)
    drafted = any(r["draft_gen_tps"] is not None for r in ok)
    columns = ["model", "precision", "prompt", "gen", "load s", "TTFT s", "prompt tok/s",
               "gen tok/s", "MLX peak GB", "RSS peak GB", "weights GB", "roofline"]
    if compare:
        columns += ["mlx-lm gen tok/s", "ours/mlx-lm gen", "ours/mlx-lm prompt"]
    if drafted:
        columns += ["draft gen tok/s", "draft/plain", "acceptance", "mean kept"]
    table = []
    for r in ok:
        cells = [r["model"], r["precision"], str(r["prompt_tokens"]), str(r["gen_tokens"]),
                 f"{r['load_s']:.2f}", f"{r['ttft_s']:.3f}",
                 _with_spread(r["prompt_tps"], r["prompt_tps_stdev"]),
                 _with_spread(r["gen_tps"], r["gen_tps_stdev"]),
                 _gb(r["peak_memory_bytes"]), _gb(r["peak_rss_bytes"]), _gb(r["weight_bytes"]),
                 "" if r["roofline_fraction"] is None else f"{100 * r['roofline_fraction']:.0f}%"]
        if compare:
            cells += [_with_spread(r["mlx_lm_gen_tps"], r["mlx_lm_gen_tps_stdev"]),
                      _ratio(r["gen_tps_ratio"]), _ratio(r["prompt_tps_ratio"])]
        if drafted:
            cells += [_with_spread(r["draft_gen_tps"], r["draft_gen_tps_stdev"]),
                      _ratio(r["draft_speedup"]),
                      "" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.0%}",
                      "" if r["mean_accepted"] is None else f"{r['mean_accepted']:.2f}"]
        table.append(cells)
    lines = [header(rows), ""] if rows else []
    if table:
        lines += [markdown_table(columns, table), ""]
    for r in rows:
        if r["status"] != "ok" or r["reason"]:
            what = "note" if r["status"] == "ok" else r["status"]
            lines.append(f"- {what}: {r['model']} {r['precision']}, prompt {r['prompt_tokens']}:"
                         f" {r['reason']}")
    return "\n".join(lines).rstrip() + "\n"


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


def check_new_file(path: str) -> None:
    """Refuse, before any work, an output path that exists or whose folder does not exist
    or cannot be written to (tried with a temporary file: permission bits do not tell)."""
    import tempfile

    if path == "-":
        return
    target = Path(path)
    if target.exists():
        raise SlmError(f"{path} already exists; choose another name or remove it.")
    if not target.parent.is_dir():
        raise SlmError(f"Cannot write {path}: the folder {target.parent} does not exist.")
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pass
    except OSError as err:
        raise SlmError(f"Cannot write {path}: {err.strerror or err} in the folder "
                       f"{target.parent}.") from None


def write_new_file(path: str, text: str) -> None:
    """Write `text` to a file that did not exist, whole or not at all."""
    from mlx_slm.store.files import write_atomically

    check_new_file(path)
    try:
        write_atomically(path, text)
    except OSError as err:
        raise SlmError(f"Writing {path} failed: {err.strerror or err}.") from None
