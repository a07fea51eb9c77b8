"""`mlx-slm bench`: throughput, latency and memory per model size, precision and length."""

import click

from mlx_slm.commands.options import SEED_RANGE, draft_options


@click.command()
@click.option("--synthetic", "-s", multiple=True, metavar="SIZE",
              help="Seeded random weights at a real shape: 270M, 450M, 1.1B, 3B or all, or "
                   "the path of a config.json (repeatable). Default (with no --model): the "
                   "quick sweep, 270M at a 128-token prompt; -s all is the full one.")
@click.option("--model", "-m", "model_dirs", multiple=True, metavar="DIR",
              help="A converted model directory (repeatable).")
@click.option("--precision", "-P", "precisions", multiple=True, metavar="NAME",
              help="float32, float16, bfloat16, 8bit, 4bit or 4bit-RECIPE (mixed; repeatable). "
                   "Default: all for synthetic models, the stored one for directories.")
@click.option("--prompt-tokens", "-p", "prompt_lengths", multiple=True,
              type=click.IntRange(min=1),
              help="Prompt length (repeatable). Default: 128, 1024 (128 in the quick sweep).")
@click.option("--gen-tokens", "-n", type=click.IntRange(min=2), default=128, show_default=True,
              help="Tokens generated per run (EOS ignored).")
@click.option("--reps", "-r", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed runs per cell; the table shows their median and spread.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs first (full prompt, 8 generated tokens).")
@click.option("--bandwidth", type=click.FloatRange(min=0, min_open=True), metavar="GB/s",
              help="Memory bandwidth for the roofline. Default: Apple's figure for the chip, "
                   "else measured once and cached.")
@click.option("--compare", type=click.Choice(["mlx-lm"]),
              help="Also run mlx-lm's generation on the same files; report ours/theirs.")
@click.option("--json", "json_path", metavar="FILE", help="Write every row as JSON (- = stdout).")
@click.option("--csv", "csv_path", metavar="FILE", help="Write every row as CSV (- = stdout).")
@click.option("--plot", "plot_path", metavar="FILE.png",
              help="Draw tok/s and memory per size and precision (needs matplotlib).")
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True,
              help="Seed of the synthetic weights and prompts (0 to 2^64-1).")
@click.option("--force", is_flag=True, help="Run cells that the memory check would skip.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop a cell (per engine) at its first token past this; completed runs "
                   "are kept.")
@draft_options
def bench(synthetic, model_dirs, precisions, prompt_lengths, gen_tokens, reps, warmup,
          bandwidth, compare, json_path, csv_path, plot_path, seed, force, time_limit, draft):
    """Benchmark throughput and memory per model size and precision.

    The plan (cells, and a floor on the time they take) is printed first. Ctrl-C or SIGTERM
    stops the sweep; the cells completed by then are printed and written all the same.
    """
    import signal
    import sys

    from mlx_slm.bench import report
    from mlx_slm.bench.sweep import (
        DEFAULT_PROMPT_LENGTHS,
        QUICK_PROMPT_LENGTHS,
        QUICK_SIZES,
        BenchRequest,
        iter_bench,
    )
    from mlx_slm.errors import SlmError
    from mlx_slm.progress import ProgressLine

    outputs = [p for p in (json_path, csv_path, plot_path) if p]
    if len(set(outputs)) < len(outputs) or [json_path, csv_path].count("-") > 1:
        raise click.BadParameter("each output needs its own file", param_hint="--json/--csv")
    for path in (json_path, csv_path):
        if path:
            report.check_new_file(path)
    if plot_path:
        from mlx_slm.bench.plot import check_plot_path

        check_plot_path(plot_path)
    if not synthetic and not model_dirs:
        synthetic, prompt_lengths = QUICK_SIZES, prompt_lengths or QUICK_PROMPT_LENGTHS
        lengths = ", ".join(map(str, prompt_lengths))
        click.echo(f"[the quick sweep: {', '.join(synthetic)} at {lengths}-token prompts; "
                   "-s all runs every size]", err=True)
    request = BenchRequest(
        synthetic=synthetic, model_dirs=model_dirs, precisions=precisions,
        prompt_lengths=prompt_lengths or DEFAULT_PROMPT_LENGTHS, gen_tokens=gen_tokens,
        reps=reps, warmup=warmup, bandwidth=bandwidth, compare=compare == "mlx-lm", seed=seed,
        force=force, time_limit=time_limit, draft=draft,
    )
    # A killed sweep (SIGTERM) unwinds like Ctrl-C: its temporary model copies are deleted
    # and the completed cells are kept.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    progress = ProgressLine()
    rows = []
    stopped = None
    try:
        for row in iter_bench(request, on_progress=progress,
                              on_plan=lambda text: click.echo(text, err=True)):
            rows.append(row)
    except KeyboardInterrupt:
        stopped = 130
    except SystemExit as stop:  # SIGTERM
        stopped = stop.code
    finally:
        progress.close()
    if stopped:
        click.echo(f"[interrupted: {len(rows)} cell(s) completed]", err=True)
        if not rows:
            sys.exit(stopped)
    table_to_stderr = "-" in (json_path, csv_path)
    if rows:
        click.echo(report.to_markdown(rows), nl=False, err=table_to_stderr)
    for path, text in ((json_path, report.to_json), (csv_path, report.to_csv)):
        if path == "-":
            click.echo(text(rows), nl=False)
        elif path:
            report.write_new_file(path, text(rows))
    if stopped:
        sys.exit(stopped)
    if not any(r["status"] == "ok" for r in rows):
        raise SlmError("No cell was measured: every one was skipped or failed (the reasons "
                       "are listed above).")
    if plot_path:
        from mlx_slm.bench.plot import plot

        plot(rows, plot_path)
