"""`mlx-slm perplexity DIR`: perplexity of a model on a text file (or the built-in sample)."""

import click


@click.command()
@click.argument("model_dir", type=click.Path(path_type=str))
@click.option("--text", "text_path", default=None, metavar="FILE",
              help="UTF-8 text to score (default: the built-in English sample, ~4,300 tokens).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Score only the first N tokens of the text.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              default="float32", show_default=True, help="Compute precision.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def perplexity(model_dir, text_path, max_tokens, dtype, as_json):
    """Perplexity of a model on a text file."""
    import json

    from mlx_slm.quality_report import format_perplexity, measure_perplexity

    report = measure_perplexity(model_dir, text_path, max_tokens, dtype)
    click.echo(json.dumps(report, indent=2) if as_json else format_perplexity(report))
