"""Options shared by the commands, each group built once into the object the apps take:
SamplingOptions, LoadOptions, PromptFormat, DraftOptions. Values are validated by the CLI
with ranges."""

import functools

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


def _sampling(**values):
    from mlx_slm.sample import SamplingOptions

    return SamplingOptions(**values)


def _load(**values):
    from mlx_slm.loader import LoadOptions

    return LoadOptions(**values)


def _format(**values):
    from mlx_slm.chat_format import PromptFormat

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
], ("dtype", "force"), "load", _load)
load_options.__doc__ = "--dtype and --force -> load (LoadOptions)."

format_options = _grouped([
    click.option("--chat/--no-chat", "chat", default=None,
                 help="Use the Instruct chat format (default: on for Instruct models, a plain "
                      "completion for base models)."),
    click.option("--system", default=None, help="System message for the chat format."),
], ("chat", "system"), "prompt_format", _format)
format_options.__doc__ = "--chat/--no-chat and --system -> prompt_format (PromptFormat)."


def _draft(draft_model, num_draft_tokens):
    from mlx_slm.apps.drafting import DraftOptions

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
                         help="UTF-8 text to score (default: the built-in English sample, "
                              "~4,300 tokens)."),
            click.option("--max-tokens", type=click.IntRange(min=1), default=None,
                         help="Score only the first N tokens of the text."),
            click.option("--dtype", type=DTYPE_CHOICE, default="float32", show_default=True,
                         help=dtype_help),
        ]):
            fn = option(fn)
        return fn

    return decorator
