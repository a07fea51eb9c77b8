"""The Python API: `from mlx_slm import load, generate, stream_generate`.

    model, tokenizer = load("apple/OpenELM-270M-Instruct")   # or a converted directory
    print(generate(model, tokenizer, "What is the capital of California?"))
    for piece in stream_generate(model, tokenizer, "Once upon a time", max_tokens=50):
        print(piece, end="", flush=True)

Instruct models get their chat format by default, as in the CLI.
"""

from collections.abc import Iterator
from pathlib import Path

from mlx_slm.chat_format import TURN_HEADERS, PromptFormat, prompt_ids
from mlx_slm.generation import Generation, text_pieces
from mlx_slm.loader import LoadOptions
from mlx_slm.sample import SamplingOptions


def load(model: str | Path, *, dtype: str | None = None, force: bool = False):
    """(model, tokenizer) for a converted directory or a Hub repo id (converted once and
    cached under ~/.cache/mlx-slm). Refuses a model that will not fit unless `force`."""
    from mlx_slm.apps.models import open_model

    loaded = open_model(str(model), LoadOptions(dtype, force))
    return loaded.model, loaded.tokenizer


def stream_generate(model, tokenizer, prompt: str | list[int], *, max_tokens: int = 256,
                    sampling: SamplingOptions = SamplingOptions(),
                    prompt_format: PromptFormat = PromptFormat(),
                    stop: tuple[str, ...] = (), result: Generation | None = None
                    ) -> Iterator[str]:
    """Yield the answer's text piece by piece. A string prompt is encoded (in the chat
    format for an Instruct model, unless `prompt_format` says otherwise); a list of ids is
    used as is. Pass a `Generation` as `result` to read the timings afterwards."""
    from mlx_slm.apps.generate_app import fit_to_context

    chat = False
    if isinstance(prompt, str):
        chat = prompt_format.uses_chat(model.args.extra)
        prompt = prompt_ids(tokenizer, prompt, chat, prompt_format.system)
    max_tokens = fit_to_context(len(prompt), max_tokens, model.args.max_context_length)
    sampling.seed_random()
    yield from text_pieces(
        model, tokenizer, list(prompt), max_tokens=max_tokens, sampler=sampling.sampler(),
        logits_processors=sampling.logits_processors(),
        stop_strings=tuple(stop) + (TURN_HEADERS if chat else ()), result=result,
    )


def generate(model, tokenizer, prompt: str | list[int], **options) -> str:
    """The whole answer as one string (options as for `stream_generate`)."""
    return "".join(stream_generate(model, tokenizer, prompt, **options))
