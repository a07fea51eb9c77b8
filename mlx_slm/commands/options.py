"""Options shared by the commands that generate text; validated by the CLI with ranges."""

import click

from mlx_slm.errors import SlmError

DEFAULT_MODEL = "apple/OpenELM-270M-Instruct"


def _in_range(name: str):
    def callback(ctx, param, value):
        if value is None:
            return value
        from mlx_slm.sample import check_range

        try:
            check_range(name, value)
        except SlmError as err:
            raise click.BadParameter(str(err)) from None
        return value

    return callback


def sampling_options(fn):
    """--temp, --top-p, --top-k, --min-p, --repetition-penalty/-context, --seed."""
    options = [
        click.option("--temp", "temperature", type=float, default=0.0, show_default=True,
                     callback=_in_range("temperature"), help="Sampling temperature; 0 is greedy."),
        click.option("--top-p", type=float, default=1.0, show_default=True,
                     callback=_in_range("top_p"), help="Nucleus sampling mass (1 = off)."),
        click.option("--top-k", type=int, default=0, show_default=True,
                     callback=_in_range("top_k"), help="Sample from the k likeliest (0 = off)."),
        click.option("--min-p", type=float, default=0.0, show_default=True,
                     callback=_in_range("min_p"),
                     help="Drop tokens below min-p x the top probability (0 = off)."),
        click.option("--repetition-penalty", type=float, default=1.2, show_default=True,
                     callback=_in_range("repetition_penalty"),
                     help="Penalty for recently generated tokens, as Apple's OpenELM "
                          "examples use (1 = off)."),
        click.option("--repetition-context", type=click.IntRange(min=1), default=64,
                     show_default=True, help="How many recent tokens the penalty looks at."),
        click.option("--seed", type=int, default=None, help="Random seed for sampling."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def model_option(fn):
    return click.option(
        "--model", "-m", default=DEFAULT_MODEL, show_default=True,
        help="A converted model directory or a Hub repo id (converted once and cached).",
    )(fn)


def dtype_option(fn):
    return click.option(
        "--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
        help="Compute dtype override (default: the model's own).",
    )(fn)


def format_options(fn):
    """--chat/--no-chat and --system: the Instruct prompt format, on or off."""
    fn = click.option("--system", default=None, help="System message for the chat format.")(fn)
    return click.option(
        "--chat/--no-chat", "chat", default=None,
        help="Use the Instruct chat format (default: on for Instruct models, a plain "
             "completion for base models).",
    )(fn)


def force_option(fn):
    return click.option("--force", is_flag=True,
                        help="Load even if the memory check says it will not fit.")(fn)
