"""`mlx-slm compare`: one prompt, several models, answers side by side with speed and memory."""

import click

from mlx_slm.commands.options import format_options, load_options, sampling_options


@click.command()
@click.argument("prompt", required=False)
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A model directory or Hub repo id (repeat for each model).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=128, show_default=True,
              help="Most tokens per answer.")
@sampling_options
@format_options
@load_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def compare(prompt, models, max_tokens, sampling, prompt_format, load, as_json):
    """Ask several models the same prompt, answers side by side.

    PROMPT defaults to "What is the capital of California?". Each model is loaded in turn,
    answers, and is freed before the next one loads.
    """
    import json
    import shutil

    from mlx_slm.apps.compare import compare_models, format_comparison
    from mlx_slm.apps.generate import checked_prompt, reference_blas_hint
    from mlx_slm.backend import active_backend
    from mlx_slm.cpu.report import runtime_report

    prompt = checked_prompt(prompt)
    hint = reference_blas_hint()
    if hint:
        click.echo(hint, err=True)
    rows = compare_models(
        prompt, list(models), prompt_format=prompt_format, max_tokens=max_tokens,
        sampling=sampling, load=load,
        on_model=lambda name: click.echo(f"[{name}]", err=True),
    )
    if as_json:
        report = {"prompt": prompt, **runtime_report(), "max_tokens": max_tokens,
                  "sampling": sampling.as_dict(), "system": prompt_format.system,
                  "results": rows}
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"Prompt: {prompt}\n")
    click.echo(format_comparison(rows, shutil.get_terminal_size((120, 24)).columns))
    click.echo(f"\n{active_backend()} backend; one cold run per model: timings are indicative.")
