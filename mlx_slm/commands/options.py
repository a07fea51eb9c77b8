"""Options shared by the commands that generate text; validated by the CLI with ranges."""

import functools
from pathlib import Path

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


def constraint_options(fn):
    """--json-schema, --json-object, --regex, --choice: at most one, handed to the command as
    one `constraint` argument (a checked mlx_slm.constrain.ConstraintSpec, or None). A bad
    schema or pattern is an error here, before any model loads."""

    @functools.wraps(fn)
    def command(*args, json_schema, json_object, regex, choices, **kwargs):
        spec = constraint_spec(json_schema, json_object, regex, choices)
        return fn(*args, constraint=spec, **kwargs)

    options = [
        click.option("--json-schema", metavar="FILE|JSON", default=None,
                     help="Output JSON valid under this schema (a file, or the schema itself)."),
        click.option("--json-object", is_flag=True, help="Output any valid JSON object."),
        click.option("--regex", metavar="PATTERN", default=None,
                     help="Output text that matches this regular expression as a whole."),
        click.option("--choice", "choices", multiple=True, metavar="TEXT",
                     help="Output exactly one of these answers (repeat for each)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def constraint_spec(json_schema: str | None, json_object: bool, regex: str | None,
                    choices: tuple[str, ...]):
    """The one constraint the options ask for, checked; None without one."""
    given = [name for name, value in (("--json-schema", json_schema),
                                      ("--json-object", json_object), ("--regex", regex),
                                      ("--choice", choices)) if value]
    if len(given) > 1:
        raise SlmError(f"{given[0]} and {given[1]} cannot be combined; give one constraint.")
    if not given:
        return None
    from mlx_slm import constrain

    if json_schema is not None:
        return constrain.json_schema(_schema_text(json_schema))
    if json_object:
        return constrain.json_object()
    if regex is not None:
        return constrain.regex(regex)
    return constrain.choice(choices)


def _schema_text(value: str) -> str:
    """--json-schema's value: a file's text, or the JSON given inline."""
    if value.lstrip().startswith("{"):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise SlmError(f"--json-schema {value!r} is neither a file nor a JSON object.")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SlmError(f"Cannot read the JSON schema {path}: {err}.") from None
