"""`mlx-slm info DIR`: size, parameters, precision and per-layer shapes of a model."""

import click


@click.command()
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(model_dir, as_json):
    """Show a model directory's size, parameters, precision and layer shapes."""
    import json

    from mlx_slm.apps.model_info import describe, format_info

    report = describe(model_dir)
    click.echo(json.dumps(report, indent=2) if as_json else format_info(report))
