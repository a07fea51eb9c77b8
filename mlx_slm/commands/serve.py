"""`mlx-slm serve`: an OpenAI-compatible HTTP server for one or more models."""

import os

import click

from mlx_slm.commands.options import DEFAULT_MODEL, load_options


@click.command()
@click.option("--model", "-m", "models", multiple=True,
              help=f"A model directory or Hub repo id (repeatable). Default: {DEFAULT_MODEL}.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; 0.0.0.0 exposes it to the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port to listen on.")
@click.option("--api-key", default=None,
              help="Require `Authorization: Bearer KEY` (default: $MLX_SLM_API_KEY, else none).")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most requests decoded together.")
@click.option("--prefix-cache-mb", type=click.IntRange(min=0), default=256, show_default=True,
              help="Memory for reusing the KV cache of repeated prompt prefixes.")
@click.option("--lora", "adapters", multiple=True, metavar="NAME=DIR",
              help="Also serve the first model with the adapter in DIR as the model NAME "
                   "(repeatable; each is loaded as its own copy of that model).")
@load_options
def serve(models, host, port, api_key, max_batch, prefix_cache_mb, adapters, load):
    """Serve models over an OpenAI-compatible HTTP API (chat and completions, streaming)."""
    if api_key is not None and not api_key.strip():
        # An empty key would leave the server open while looking locked.
        raise click.BadParameter("must not be empty (leave it out for no key).",
                                 param_hint="'--api-key'")
    from mlx_slm.apps.serve.run import require_extra

    require_extra()
    from mlx_slm.apps.serve.run import serve as run
    from mlx_slm.apps.serve.worker import Settings

    names = list(models) or [DEFAULT_MODEL]
    settings = Settings(max_batch=max_batch, prefix_cache_bytes=prefix_cache_mb * 2**20,
                        adapters=_adapters(adapters, names))
    api_key = api_key or os.environ.get("MLX_SLM_API_KEY") or None
    run(names, host, port, load, settings, api_key)


def _adapters(values: tuple[str, ...], names: list[str]) -> tuple[tuple[str, str], ...]:
    """--lora NAME=DIR values, checked: a name of its own and an adapter directory."""
    from pathlib import Path

    adapters = []
    for value in values:
        name, _, directory = value.partition("=")
        if not name or not directory:
            raise click.BadParameter(f"expected NAME=DIR, got {value!r}.", param_hint="'--lora'")
        if name in names or name in dict(adapters):
            raise click.BadParameter(f"the name {name!r} is already served.",
                                     param_hint="'--lora'")
        if not Path(directory).is_dir():
            raise click.BadParameter(f"{directory} is not a directory.", param_hint="'--lora'")
        adapters.append((name, directory))
    return tuple(adapters)
