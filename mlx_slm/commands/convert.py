"""`mlx-slm convert SOURCE OUT_DIR`: a Hub repo or Hub-layout directory -> an MLX model dir."""

import re

import click

from mlx_slm.commands.options import DTYPE_CHOICE, check_report_options, quantization_options

SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class ByteSize(click.ParamType):
    """A size such as 5GB, 500MB, 2GiB or a plain number of bytes."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]i?B|B)?\s*", str(value), re.IGNORECASE)
        size = int(float(match[1]) * SIZE_UNITS[(match[2] or "").upper()]) if match else 0
        if size <= 0:
            self.fail(f"{value!r} is not a size such as 5GB or 500MB.", param, ctx)
        return size


# Options that only a quantizing conversion (-q) uses.
QUANT_OPTIONS = ("q_bits", "q_group_size", "q_recipe", "no_report", "report_tokens")


@click.command()
@click.argument("source")
@click.argument("out_dir", type=click.Path(path_type=str))
@click.option("--revision", default=None,
              help="Branch, tag or commit of a Hub SOURCE (default: main).")
@click.option("--dtype", type=DTYPE_CHOICE, default=None,
              help="Weight dtype (default: float16; bfloat16 for 3B, which overflows in float16).")
@click.option("--tokenizer", default=None, metavar="PATH|REPO",
              help="The Llama-2 tokenizer.model: a file, a directory holding it, or a Hub repo "
                   "id (default: the source's own, else meta-llama/Llama-2-7b-hf, else "
                   "NousResearch/Llama-2-7b-hf). Its sha256 is checked.")
@click.option("--force", is_flag=True,
              help="Replace OUT_DIR if it exists (only once the new one is complete).")
@click.option("-q", "--quantize", is_flag=True, help="Quantize the weights.")
@quantization_options
@click.option("--max-shard-size", type=ByteSize(), default="5GB", show_default=True,
              help="Split the weights into files of at most this size (e.g. 2GB, 500MB).")
@click.option("--instruct/--no-instruct", default=None,
              help="Mark the model as Instruct (chat format on by default in generate/chat); "
                   "default: from the repo or directory name.")
@click.pass_context
def convert(ctx, source, out_dir, revision, dtype, tokenizer, force, quantize, q_bits,
            q_group_size, q_recipe, no_report, report_tokens, max_shard_size, instruct):
    """Convert an OpenELM checkpoint (Hub repo or local dir) to an MLX directory.

    SOURCE is a Hub repo id (e.g. apple/OpenELM-270M-Instruct) or a local directory in the
    Hub layout. Nothing is written unless the conversion completes.
    """
    from mlx_slm.convert.pipeline import convert as run_conversion

    given = [name for name in QUANT_OPTIONS
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given and not quantize:
        option = "--" + given[0].replace("_", "-")
        raise click.UsageError(f"{option} needs -q/--quantize.")
    check_report_options(no_report)
    result = run_conversion(
        source, out_dir, revision=revision, dtype=dtype, tokenizer=tokenizer, force=force,
        quantize=quantize, q_bits=q_bits, q_group_size=q_group_size,
        q_recipe=q_recipe, max_shard_bytes=max_shard_size, instruct=instruct,
    )
    click.echo(summary(result))
    # Only a quantization made here has an unquantized source to be compared with.
    if quantize and not no_report:
        from mlx_slm.apps.quality_report import compare, format_quality_report

        click.echo("Quality of the quantization against the unquantized source:")
        click.echo(format_quality_report(compare(result.source_path, result.out_dir,
                                             max_tokens=report_tokens)))


def summary(result) -> str:
    """The lines printed after a conversion."""
    from mlx_slm.apps.model_info import quantization_summary
    from mlx_slm.sizes import human_bytes

    revision = f" (revision {result.revision[:12]})" if result.revision else ""
    q = result.quantization
    quantized = quantization_summary(q) if q else "not quantized"
    kind = "Instruct (chat format on)" if result.instruct else "base model"
    files = len(result.files)
    size = human_bytes(result.bytes)
    tok = result.tokenizer
    return "\n".join([
        f"Converted {result.source}{revision} -> {result.out_dir}",
        f"  {size} of weights on disk ({files} file{'s' if files > 1 else ''}), "
        f"{result.dtype}, {quantized}, {kind}",
        f"  tokenizer sha256 {tok.sha256[:8]}...{tok.sha256[-4:]} (Llama-2, from {tok.origin})",
        f"  took {result.seconds:.1f} s",
    ])
