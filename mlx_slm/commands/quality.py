"""`mlx-slm quality BASE_DIR QUANT_DIR`: what a quantization costs in quality and saves in size."""

import click


@click.command()
@click.argument("base_dir", type=click.Path(path_type=str))
@click.argument("quant_dir", type=click.Path(path_type=str))
@click.option("--text", "text_path", default=None, metavar="FILE",
              help="UTF-8 text to score (default: the built-in English sample, ~4,300 tokens).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None,
              help="Score only the first N tokens of the text.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]),
              default="float32", show_default=True,
              help="Compute precision of both models (float32 isolates the quantization).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def quality(base_dir, quant_dir, text_path, max_tokens, dtype, as_json):
    """Quality cost of a quantization: perplexity, KL divergence, top-1 agreement.

    Scores BASE_DIR (the full model) and QUANT_DIR (its quantization) on the same text and
    reports both perplexities, the mean KL(base || quant) of their next-token distributions,
    how often their likeliest next token agrees, and size on disk, bits per weight and
    weight memory of each.
    """
    import json

    from mlx_slm.quality_report import compare, format_comparison

    report = compare(base_dir, quant_dir, text_path, max_tokens, dtype)
    click.echo(json.dumps(report, indent=2) if as_json else format_comparison(report))
