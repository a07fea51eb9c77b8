"""`mlx-slm quantize SRC_DIR DST_DIR`: quantize a converted model, then report what it cost."""

import click

from mlx_slm.recipes import RECIPES

RECIPE_HELP = "; ".join(f"{name}: {about}" for name, (_, about) in RECIPES.items())


@click.command()
@click.argument("src_dir", type=click.Path(path_type=str))
@click.argument("dst_dir", type=click.Path(path_type=str))
@click.option("--q-bits", type=int, default=4, show_default=True,
              help="Bits per weight: 2, 3, 4, 5, 6 or 8.")
@click.option("--q-group-size", type=int, default=64, show_default=True,
              help="Weights sharing one scale and bias: 32, 64 or 128.")
@click.option("--q-recipe", default=None, metavar="NAME",
              help=f"Mixed precision: sensitive layers get 6 bits (8 from --q-bits 5 up). "
                   f"{RECIPE_HELP}.")
@click.option("--force", is_flag=True,
              help="Replace DST_DIR if it exists (only once the new one is complete).")
@click.option("--no-report", is_flag=True, help="Skip the quality report.")
@click.option("--report-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens of the built-in sample text the quality report scores.")
def quantize(src_dir, dst_dir, q_bits, q_group_size, q_recipe, force, no_report,
             report_tokens):
    """Quantize a converted model directory.

    Writes DST_DIR (in mlx-lm's format) from the unquantized model in SRC_DIR, then prints
    the quality report: perplexity of both, KL divergence, top-1 agreement, size and memory.
    """
    from pathlib import Path

    from mlx_slm.apps.quality_report import compare, format_quality_report
    from mlx_slm.apps.quantize_app import quantize_directory
    from mlx_slm.tokenizer import TOKENIZER_FILE

    result = quantize_directory(src_dir, dst_dir, q_bits, q_group_size, q_recipe, force)
    q = result.quantization
    raised = [v["bits"] for v in q.values() if isinstance(v, dict)]
    mixed = f", recipe {q_recipe}: {len(raised)} layers at {max(raised)}-bit" if raised else ""
    click.echo(f"Quantized {result.src_dir} -> {result.out_dir}: {q['bits']}-bit, group size "
               f"{q['group_size']}{mixed} ({result.seconds:.1f} s)")
    if no_report:
        return
    if not (Path(src_dir) / TOKENIZER_FILE).exists():
        click.echo(f"No quality report: {src_dir} has no {TOKENIZER_FILE} to read the text with.")
        return
    click.echo(format_quality_report(compare(src_dir, result.out_dir, max_tokens=report_tokens)))
