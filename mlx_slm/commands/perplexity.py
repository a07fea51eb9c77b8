"""`mlx-slm perplexity DIR`: perplexity of a model on a text file (or the built-in sample)."""

import click

from mlx_slm.commands.options import scoring_options


@click.command()
@click.argument("model_dir", type=click.Path(path_type=str))
@scoring_options("Compute precision.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def perplexity(model_dir, text_path, max_tokens, dtype, as_json):
    """Perplexity of a model on a text file."""
    import json

    from mlx_slm.apps.quality_report import format_perplexity, measure_perplexity

    report = measure_perplexity(model_dir, text_path, max_tokens, dtype)
    click.echo(json.dumps(report, indent=2) if as_json else format_perplexity(report))
