"""`mlx-slm quality BASE_DIR QUANT_DIR`: what a quantization costs in quality and saves in size."""

import click

from mlx_slm.commands.options import scoring_options


@click.command()
@click.argument("base_dir", type=click.Path(path_type=str))
@click.argument("quant_dir", type=click.Path(path_type=str))
@scoring_options("Compute precision of both models (float32 isolates the quantization).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def quality(base_dir, quant_dir, text_path, max_tokens, dtype, as_json):
    """Quality cost of a quantization: perplexity, KL divergence, top-1 agreement.

    Scores BASE_DIR (the full model) and QUANT_DIR (its quantization) on the same text and
    reports both perplexities, the mean KL(base || quant) of their next-token distributions,
    how often their likeliest next token agrees, and size on disk, bits per weight and
    weight memory of each.
    """
    import json

    from mlx_slm.apps.quality_report import compare, format_quality_report

    report = compare(base_dir, quant_dir, text_path, max_tokens, dtype)
    click.echo(json.dumps(report, indent=2) if as_json else format_quality_report(report))
