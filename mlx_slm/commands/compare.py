"""`mlx-slm compare`: one prompt, several models, answers side by side with speed and memory."""

import click

from mlx_slm.commands.options import dtype_option, force_option, format_options, sampling_options


@click.command()
@click.argument("prompt", required=False)
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A model directory or Hub repo id (repeat for each model).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=128, show_default=True,
              help="Most tokens per answer.")
@sampling_options
@format_options
@dtype_option
@force_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def compare(prompt, models, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty,
            repetition_context, seed, chat, system, dtype, force, as_json):
    """Ask several models the same prompt, answers side by side.

    PROMPT defaults to "What is the capital of California?". Each model is loaded in turn,
    answers, and is freed before the next one loads.
    """
    import json
    import shutil

    from mlx_slm.blas import blas_in_use
    from mlx_slm.compare import compare_models, format_comparison
    from mlx_slm.sample import make_logits_processors, make_sampler
    from mlx_slm.session import DEFAULT_PROMPT, reference_blas_hint
    from mlx_slm.stats import backend

    prompt = prompt or DEFAULT_PROMPT
    hint = reference_blas_hint()
    if hint:
        click.echo(hint, err=True)
    rows = compare_models(
        prompt, list(models), chat=chat, system=system, max_tokens=max_tokens,
        sampler=make_sampler(temperature, top_p, top_k, min_p),
        logits_processors=make_logits_processors(repetition_penalty, repetition_context),
        seed=seed, dtype=dtype, force=force,
        on_model=lambda name: click.echo(f"[{name}]", err=True),
    )
    if as_json:
        report = {"prompt": prompt, "backend": backend(), "blas": blas_in_use(), "results": rows}
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"Prompt: {prompt}\n")
    click.echo(format_comparison(rows, shutil.get_terminal_size((120, 24)).columns))
    click.echo(f"\n{backend()} backend; one cold run per model: timings are indicative.")
