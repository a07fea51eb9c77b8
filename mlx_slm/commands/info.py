"""`mlx-slm info DIR`: size, parameters, precision and per-layer shapes of a model."""

import click


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model_dir, as_json):
    """Show a model directory's size, parameters, precision and layer shapes."""
    import json

    from mlx_slm.apps.model_info import describe

    report = describe(model_dir)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key in ("path", "source", "parameters", "dtype", "precision", "quantization",
                "size_on_disk_gb",
                "weight_memory_gb", "bits_per_weight", "tokenizer", "backend", "blas"):
        value = report.get(key)
        if value is not None:
            click.echo(f"{key:>17}: {value}")
    click.echo("\nlayer  q_heads  kv_heads  ffn_dim      params")
    for row in report["layers"]:
        click.echo(f"{row['layer']:>5}  {row['q_heads']:>7}  {row['kv_heads']:>8}  "
                   f"{row['ffn_dim']:>7}  {row['params']:>10,}")
