"""The Python API: `from mlx_slm import load, generate, stream_generate`.

    model, tokenizer = load("apple/OpenELM-270M-Instruct")   # or a converted directory
    print(generate(model, tokenizer, "What is the capital of California?"))
    for piece in stream_generate(model, tokenizer, "Once upon a time", max_tokens=50):
        print(piece, end="", flush=True)

Instruct models get their chat format by default, as in the CLI.
"""

from collections.abc import Iterator
from pathlib import Path

from mlx_slm.chat_format import PromptFormat
from mlx_slm.chooser import TokenChooser
from mlx_slm.generation import Generation, text_pieces
from mlx_slm.loader import LoadOptions
from mlx_slm.sample import SamplingOptions


def load(model: str | Path, *, dtype: str | None = None, force: bool = False):
    """(model, tokenizer) for a converted directory or a Hub repo id (converted once and
    cached under ~/.cache/mlx-slm). Refuses a model that will not fit unless `force`."""
    from mlx_slm.apps.model_loading import open_model

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
    prepared = prompt_format.prepare(tokenizer, model.args, prompt, max_tokens=max_tokens,
                                     stop=tuple(stop))
    yield from text_pieces(
        model, tokenizer, prepared.ids, max_tokens=prepared.max_tokens,
        chooser=TokenChooser(sampling, prepared.ids), stop_strings=prepared.stop_strings,
        result=result,
    )


def generate(model, tokenizer, prompt: str | list[int], **options) -> str:
    """The whole answer as one string (options as for `stream_generate`)."""
    return "".join(stream_generate(model, tokenizer, prompt, **options))
