"""`mlx-slm quantize SRC_DIR DST_DIR`: quantize a converted model, then report what it cost."""

import click

from mlx_slm.commands.options import check_report_options, quantization_options


@click.command()
@click.argument("src_dir", type=click.Path(path_type=str))
@click.argument("dst_dir", type=click.Path(path_type=str))
@quantization_options
@click.option("--force", is_flag=True,
              help="Replace DST_DIR if it exists (only once the new one is complete).")
def quantize(src_dir, dst_dir, q_bits, q_group_size, q_recipe, force, no_report,
             report_tokens):
    """Quantize a converted model directory.

    Writes DST_DIR (in mlx-lm's format) from the unquantized model in SRC_DIR, then prints
    the quality report: perplexity of both, KL divergence, top-1 agreement, size and memory.
    """
    from mlx_slm.apps.quality_report import compare, format_quality_report
    from mlx_slm.apps.quantize import quantize_directory

    check_report_options(no_report)

    result = quantize_directory(src_dir, dst_dir, q_bits, q_group_size, q_recipe, force)
    q = result.quantization
    raised = [v["bits"] for v in q.values() if isinstance(v, dict)]
    mixed = f", recipe {q_recipe}: {len(raised)} layers at {max(raised)}-bit" if raised else ""
    click.echo(f"Quantized {result.src_dir} -> {result.out_dir}: {q['bits']}-bit, group size "
               f"{q['group_size']}{mixed} ({result.seconds:.1f} s)")
    if no_report:
        return
    click.echo(format_quality_report(compare(src_dir, result.out_dir, max_tokens=report_tokens)))
