"""`mlx-slm fuse MODEL ADAPTER OUT`: merge an adapter into a new model directory."""

import click

from mlx_slm.recipes import SUPPORTED_BITS, SUPPORTED_GROUP_SIZES


@click.command()
@click.argument("model", type=str)
@click.argument("adapter_dir", type=click.Path(path_type=str))
@click.argument("out_dir", type=click.Path(path_type=str))
@click.option("-q", "--quantize", is_flag=True,
              help="Re-quantize: a quantized base's fused layers with its own settings, a "
                   "float base entirely with --q-bits and --q-group-size.")
@click.option("--q-bits", type=click.Choice(SUPPORTED_BITS), default=4, show_default=True,
              help="Bits per weight (float base).")
@click.option("--q-group-size", type=click.Choice(SUPPORTED_GROUP_SIZES), default=64,
              show_default=True, help="Weights sharing one scale and bias (float base).")
@click.option("--no-report", is_flag=True, help="Skip the quality report.")
@click.option("--report-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens of the built-in sample text the report scores.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (once the new one is "
                                            "complete).")
def fuse(model, adapter_dir, out_dir, quantize, q_bits, q_group_size, no_report,
         report_tokens, force):
    """Merge an adapter into a new model directory, optionally re-quantized.

    MODEL is a converted directory or a Hub repo id; ADAPTER_DIR holds adapters.safetensors
    and adapter_config.json (mlx-slm finetune's or mlx_lm.lora's).

    Then reports how closely the fused model follows the base with the adapter unfused:
    perplexity of both, KL divergence, top-1 agreement, size.
    """
    from mlx_slm.apps.fuse import fuse_directory, fuse_report
    from mlx_slm.apps.model_loading import resolve_model_dir
    from mlx_slm.apps.quality_report import format_quality_report

    model_dir = resolve_model_dir(model)
    result = fuse_directory(model_dir, adapter_dir, out_dir, quantize, q_bits, q_group_size,
                            force)
    q = result.quantization
    what = f", {q['bits']}-bit, group size {q['group_size']}" if q else ""
    click.echo(f"Fused {adapter_dir} into {result.layers} layers of {model_dir} -> "
               f"{result.out_dir}{what} ({result.seconds:.1f} s)")
    if no_report:
        return
    click.echo("Fused (right) against the unfused adapter (left):")
    click.echo(format_quality_report(fuse_report(model_dir, adapter_dir, result.out_dir,
                                                 report_tokens)))
