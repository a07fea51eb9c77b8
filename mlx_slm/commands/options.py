"""Options shared by the commands, each group built once into the object the apps take:
SamplingOptions, LoadOptions, PromptFormat, DraftOptions, a constraint. Values are validated
by the CLI."""

import functools
from pathlib import Path

import click

from mlx_slm.errors import SlmError

DEFAULT_MODEL = "apple/OpenELM-270M-Instruct"
DTYPE_CHOICE = click.Choice(["float16", "bfloat16", "float32"])
# mx.random.seed takes an unsigned 64-bit integer.
SEED_RANGE = click.IntRange(0, 2**64 - 1)


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


def _grouped(options: list, fields: tuple[str, ...], name: str, build):
    """A decorator adding `options` and passing their values as one object `name`."""

    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            kwargs[name] = build(**{field: kwargs.pop(field) for field in fields})
            return fn(*args, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorator


def _given(name: str) -> bool:
    """Whether the user typed option `name` (rather than it taking its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _sampling(**values):
    from mlx_slm.sample import SamplingOptions

    if values["temperature"] == 0:  # greedy: the filters and the seed change nothing
        idle = [f"--{name.replace('_', '-')}" for name in ("top_p", "top_k", "min_p", "seed")
                if _given(name)]
        if idle:
            verb = "changes" if len(idle) == 1 else "change"
            click.echo(f"[note: {', '.join(idle)} {verb} nothing at --temp 0 (greedy); give "
                       "--temp above 0 to sample]", err=True)
    if values["repetition_penalty"] == 1 and _given("repetition_context"):
        click.echo("[note: --repetition-context changes nothing with --repetition-penalty 1 "
                   "(off)]", err=True)
    return SamplingOptions(**values)


def _load(**values):
    from mlx_slm.loader import LoadOptions

    return LoadOptions(**values)


def _format(**values):
    from mlx_slm.chat_format import PromptFormat
    from mlx_slm.tokenizer import require_utf8

    if values["system"] is not None and values["chat"] is False:
        raise click.UsageError("--system needs the chat format; drop --no-chat.")
    if values["system"]:
        require_utf8(values["system"])  # before any model loads
    return PromptFormat(**values)


sampling_options = _grouped([
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
                 help="Penalty for recently generated tokens, as Apple's OpenELM examples use "
                      "(1 = off)."),
    click.option("--repetition-context", type=click.IntRange(min=1), default=64,
                 show_default=True, help="How many recent tokens the penalty looks at."),
    click.option("--seed", type=SEED_RANGE, default=None,
                 help="Random seed for sampling (0 to 2^64-1)."),
], ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "repetition_context",
    "seed"), "sampling", _sampling)
sampling_options.__doc__ = "--temp, --top-p, --top-k, --min-p, --repetition-*, --seed -> sampling."

load_options = _grouped([
    click.option("--dtype", type=DTYPE_CHOICE, default=None,
                 help="Compute dtype override (default: the model's own)."),
    click.option("--force", is_flag=True,
                 help="Load even if the memory check says it will not fit."),
    click.option("--adapter", default=None, metavar="DIR",
                 help="Apply a LoRA/DoRA adapter directory (mlx-slm finetune's or "
                      "mlx_lm.lora's) without fusing it."),
], ("dtype", "force", "adapter"), "load", _load)
load_options.__doc__ = "--dtype, --force and --adapter -> load (LoadOptions)."

format_options = _grouped([
    click.option("--chat/--no-chat", "chat", default=None,
                 help="Use the Instruct chat format (default: on for Instruct models, a plain "
                      "completion for base models)."),
    click.option("--system", default=None,
                 help="System message; it turns the chat format on for a base model too."),
], ("chat", "system"), "prompt_format", _format)
format_options.__doc__ = "--chat/--no-chat and --system -> prompt_format (PromptFormat)."


def _draft(draft_model, num_draft_tokens):
    from mlx_slm.apps.drafting import DraftOptions

    if num_draft_tokens is not None and draft_model is None:
        raise click.UsageError("--num-draft-tokens needs --draft-model (it sets how many "
                               "tokens the draft model proposes per round).")
    return DraftOptions(draft_model, num_draft_tokens)


draft_options = _grouped([
    click.option("--draft-model", default=None, metavar="DIR_OR_REPO",
                 help="Speculative decoding: a smaller model sharing the tokenizer drafts "
                      "tokens that this model verifies ('auto': the smallest converted one)."),
    click.option("--num-draft-tokens", type=click.IntRange(1, 64),
                 default=None, help="Tokens drafted per round (default: adapts to the "
                                    "acceptance rate)."),
], ("draft_model", "num_draft_tokens"), "draft", _draft)
draft_options.__doc__ = "--draft-model and --num-draft-tokens -> draft (DraftOptions)."


def model_option(fn):
    return click.option(
        "--model", "-m", default=DEFAULT_MODEL, show_default=True,
        help="A converted model directory or a Hub repo id (converted once and cached).",
    )(fn)


def scoring_options(dtype_help: str):
    """--text, --max-tokens and --dtype (default float32) of the commands that score text."""

    def decorator(fn):
        for option in reversed([
            click.option("--text", "text_path", default=None, metavar="FILE",
                         help="UTF-8 text to score, - for stdin (default: the built-in "
                              "English sample, ~4,300 tokens)."),
            click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                         help="Score only the first N tokens of the text."),
            click.option("--dtype", type=DTYPE_CHOICE, default="float32", show_default=True,
                         help=dtype_help),
        ]):
            fn = option(fn)
        return fn

    return decorator


def quantization_options(fn):
    """--q-bits, --q-group-size, --q-recipe, --no-report and --report-tokens, declared once
    for `convert -q` and `quantize`."""
    from mlx_slm.recipes import RECIPES, SUPPORTED_BITS, SUPPORTED_GROUP_SIZES

    recipes = "; ".join(f"{name}: {about}" for name, (_, about) in RECIPES.items())
    for option in reversed([
        click.option("--q-bits", type=click.Choice(SUPPORTED_BITS), default=4,
                     show_default=True, help="Bits per quantized weight."),
        click.option("--q-group-size", type=click.Choice(SUPPORTED_GROUP_SIZES), default=64,
                     show_default=True, help="Weights sharing one scale and bias."),
        click.option("--q-recipe", default=None, metavar="NAME",
                     help="Mixed precision: sensitive layers get 6 bits (8 from --q-bits 5 "
                          f"up). {recipes}."),
        click.option("--no-report", is_flag=True,
                     help="Skip the quality report that follows the quantization."),
        click.option("--report-tokens", type=click.IntRange(min=1), default=512,
                     show_default=True,
                     help="Tokens of the built-in sample text the quality report scores."),
    ]):
        fn = option(fn)
    return fn


def check_report_options(no_report: bool) -> None:
    """--report-tokens with --no-report would be ignored: a usage error."""
    if no_report and _given("report_tokens"):
        raise click.UsageError("--report-tokens sets the quality report, which --no-report "
                               "skips; give one of them.")


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
    import mlx_slm.constrain as constrain

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
