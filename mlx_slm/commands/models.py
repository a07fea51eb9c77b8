"""`mlx-slm models`: list the converted-model cache; `models rm`, `models pull`."""

import click


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def models(ctx, as_json):
    """List, remove and pull the models converted into the cache.

    Alone, lists every cached model: repo id, precision, size on disk (every file), when it
    was converted and last used, and whether it is Instruct. The cache is
    $MLX_SLM_HOME/models (default ~/.cache/mlx-slm/models).
    """
    if ctx.invoked_subcommand is not None:
        if as_json:
            raise click.UsageError("--json lists the models; it goes without a subcommand.")
        return
    import json
    import time

    from mlx_slm.apps.model_cache import format_models, list_models
    from mlx_slm.convert.auto import cache_root

    found = list_models()
    if as_json:
        click.echo(json.dumps({"cache": str(cache_root()),
                               "models": [m.as_dict() for m in found]}, indent=2))
        return
    click.echo(format_models(found, time.time()))


@models.command(short_help="Remove cached models (asks first; -y does not).")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("-y", "--yes", is_flag=True, help="Remove without asking.")
def rm(names, yes):
    """Remove cached models (NAME: a repo id or an entry name from `mlx-slm models`)."""
    import sys

    from mlx_slm.apps.model_cache import find_models, remove_model
    from mlx_slm.sizes import human_bytes

    picked = find_models(list(names))
    total = sum(m.size_bytes for m in picked)
    for m in picked:
        click.echo(f"  {m.repo_id}  {human_bytes(m.size_bytes)}  {m.path}", err=True)
    if not yes:
        try:
            answer = click.confirm(f"Remove {len(picked)} model(s), {human_bytes(total)}?",
                                   default=False, err=True)
        except click.Abort:  # end of input: no answer is no
            answer = False
        if not answer:
            click.echo("Nothing removed.", err=True)
            sys.exit(1)
    for m in picked:
        remove_model(m)
        click.echo(f"Removed {m.repo_id} ({m.path})")


@models.command(short_help="Convert a Hub repo into the cache now.")
@click.argument("repo")
@click.option("--revision", default=None, help="Branch, tag or commit (default: main).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the model's directory.")
def pull(repo, revision, quiet):
    """Convert a Hub repo into the cache without generating (generate -m REPO reuses it)."""
    from mlx_slm.apps.model_cache import pull as pull_model

    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    entry, fresh = pull_model(repo, revision, log=(lambda message: None) if quiet else None)
    if quiet:
        click.echo(str(entry))
    elif fresh:
        click.echo(f"Pulled {repo} into {entry}")
    else:
        click.echo(f"{repo} is already in the cache: {entry} (mlx-slm models rm {repo}, then "
                   "pull again, to refresh it)")
