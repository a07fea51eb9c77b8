"""`--plot`: generation tok/s and peak memory per model size and precision, as one figure."""

import math
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.memory import GB
from mlx_slm.store.files import atomic_path


def require_matplotlib() -> None:
    """Fail before the sweep, not after it, when the plot cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SlmError("--plot needs matplotlib: pip install 'mlx-slm[plot]' "
                       "(or pip install matplotlib).") from None


# Formats matplotlib writes on every installation, chosen by the file name's extension.
IMAGE_EXTENSIONS = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".eps")


def check_plot_path(path: str) -> None:
    """Refuse, before the sweep, a plot file that cannot be written or has no image extension."""
    from mlx_slm.bench.report import check_new_file

    if path == "-":
        raise SlmError("--plot needs a file name, not - (stdout).")
    if Path(path).suffix.lower() not in IMAGE_EXTENSIONS:
        raise SlmError(f"--plot {path}: the name must end in an image extension "
                       f"({', '.join(IMAGE_EXTENSIONS)}).")
    check_new_file(path)
    require_matplotlib()


def _or_nan(value) -> float:
    return math.nan if value is None else value


def plot(rows: list[dict], path: str) -> None:
    """Grouped bars per model (one bar per precision) for the shortest prompt measured."""
    from mlx_slm.bench.report import check_new_file

    check_new_file(path)
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise SlmError("Nothing to plot: every cell was skipped or failed.")
    prompt = min(r["prompt_tokens"] for r in ok)
    shown = [r for r in rows if r["prompt_tokens"] == prompt]
    ok = [r for r in ok if r["prompt_tokens"] == prompt]
    models = list(dict.fromkeys(r["model"] for r in shown))
    precisions = list(dict.fromkeys(r["precision"] for r in shown))
    by_cell = {(r["model"], r["precision"]): r for r in ok}
    # A cell that did not run is a gap (NaN, not a zero) labelled with why.
    gaps = {(r["model"], r["precision"]): r["status"] for r in shown if r["status"] != "ok"}
    width = 0.8 / len(precisions)
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(precisions):
        xs = [m + (i - (len(precisions) - 1) / 2) * width for m in range(len(models))]
        cells = [by_cell.get((model, name)) for model in models]
        speed.bar(xs, [c["gen_tps"] if c else math.nan for c in cells], width, label=name,
                  yerr=[_or_nan(c and c["gen_tps_stdev"]) for c in cells], capsize=2,
                  ecolor="0.45")
        memory.bar(xs, [c["peak_memory_bytes"] / GB if c else math.nan for c in cells], width,
                   label=name)
        theirs = [(x + width / 4, c["mlx_lm_gen_tps"]) for x, c in zip(xs, cells)
                  if c and c["mlx_lm_gen_tps"] is not None]
        if theirs:
            speed.scatter(*zip(*theirs), marker="D", s=18, color="black", zorder=3,
                          label="mlx-lm" if i == 0 else None)
        for x, model in zip(xs, models):
            if (model, name) in gaps:
                for axis in (speed, memory):
                    axis.text(x, 0, f"{name} {gaps[model, name]}", rotation=90, ha="center",
                              va="bottom", fontsize="x-small", color="0.4")
    for axis, title in ((speed, "generation tok/s (median ± sd)"),
                        (memory, "MLX peak memory, GB")):
        axis.set_xticks(range(len(models)), models)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    speed.legend(title="precision", fontsize="small")
    first = ok[0]
    fig.suptitle(f"mlx-slm bench: {first['backend']} backend, {first['cpu']}, "
                 f"MLX {first['mlx_version']}, {first['date'][:10]}; prompt {prompt}, "
                 f"{first['gen_tokens']} generated tokens", fontsize="medium")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
