"""`mlx-slm generate`: stream a completion to stdout, stats to stderr (or one JSON object)."""

import sys

import click

from mlx_slm.commands.options import (
    constraint_options,
    draft_options,
    format_options,
    load_options,
    model_option,
    sampling_options,
)


def _non_empty(ctx, param, values):
    if any(not value for value in values):
        raise click.BadParameter("an empty stop string would never stop anything")
    return values


@click.command()
@click.argument("prompt_argument", metavar="[PROMPT]", required=False)
@model_option
@click.option("--prompt", "-p", default=None,
              help='The prompt ("-" reads stdin; so does a pipe). Default: "What is the capital '
                   'of California?". An empty prompt is an error.')
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most tokens to generate.")
@sampling_options
@click.option("--ignore-eos", is_flag=True, help="Keep generating past the end-of-text token.")
@click.option("--stop", "stop_strings", multiple=True, callback=_non_empty,
              help="Stop at this string (repeatable).")
@constraint_options
@load_options
@format_options
@draft_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def generate(prompt_argument, model, prompt, max_tokens, sampling, ignore_eos, stop_strings,
             constraint, load, prompt_format, draft, as_json):
    """Generate text from a prompt, with speed and memory stats.

    The prompt is PROMPT or -p TEXT (not both), else stdin when it is a pipe or a file.
    """
    from mlx_slm.apps.generate import GenerationRequest, run_generation, stdin_prompt

    if prompt_argument is not None:
        if prompt is not None:
            raise click.UsageError("Give the prompt once: as PROMPT or with -p, not both.")
        prompt = prompt_argument
    if prompt is None or prompt == "-":
        prompt = stdin_prompt(explicit=prompt == "-")
    request = GenerationRequest(
        model=model, prompt=prompt, max_tokens=max_tokens, sampling=sampling, load=load,
        format=prompt_format, draft=draft, ignore_eos=ignore_eos, stop_strings=tuple(stop_strings),
        constraint=constraint,
    )
    sys.exit(run_generation(request, as_json=as_json))
