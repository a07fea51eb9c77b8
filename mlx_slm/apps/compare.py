"""One prompt, several models in turn: answers side by side with speed and memory."""

from collections.abc import Callable
from pathlib import Path

from mlx_slm.chat_format import PromptFormat
from mlx_slm.loader import LoadOptions
from mlx_slm.memory import GB
from mlx_slm.sample import SamplingOptions


def display_name(name: str) -> str:
    """A Hub id as is; a directory by its last component."""
    path = Path(name)
    return path.name if path.is_dir() else name


def memory_after() -> dict:
    """MLX's peak since the model's load, and the process's resident set now, in GB."""
    from mlx_slm.memory import current_rss_bytes, mlx_peak_bytes

    rss = current_rss_bytes()
    return {"peak_memory_gb": mlx_peak_bytes() / GB,
            "rss_gb": rss / GB if rss is not None else None}


def compare_models(prompt: str, names: list[str], *,
                   prompt_format: PromptFormat = PromptFormat(), max_tokens: int = 128,
                   sampling: SamplingOptions = SamplingOptions(),
                   load: LoadOptions = LoadOptions(),
                   on_model: Callable[[str], None] | None = None) -> list[dict]:
    """Ask each model `prompt` in the form that suits it (or the one the format forces)."""
    from mlx_slm.apps.model_loading import load_each
    from mlx_slm.chooser import TokenChooser
    from mlx_slm.generation import stream_text
    from mlx_slm.loader import model_dtype

    rows = []
    sampling.sampler()  # bad sampling values fail before any model loads
    for loaded in load_each(names, load):
        if on_model is not None:
            on_model(loaded.name)
        model, tokenizer = loaded.model, loaded.tokenizer
        prepared = prompt_format.prepare(tokenizer, model.args, prompt, max_tokens=max_tokens,
                                         name=loaded.source_name)
        # A seed gives every model the same random stream.
        result = stream_text(
            model, tokenizer, prepared.ids, max_tokens=prepared.max_tokens,
            chooser=TokenChooser(sampling, prepared.ids), stop_strings=prepared.stop_strings,
        )
        rows.append({
            "model": loaded.name,
            "format": "chat" if prepared.chat else "completion",
            "answer": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "generation_tokens": result.generation_tokens,
            "prompt_tps": result.prompt_tps or None,  # None: nothing timed (one token)
            "generation_tps": result.generation_tps or None,
            "ttft_s": result.prompt_s,
            "load_s": loaded.load_s,
            "dtype": model_dtype(model),
            **memory_after(),
        })
        del model  # so that it is freed before the next model loads
    return rows


def rate_cell(tps: float | None) -> str:
    """A tok/s table cell; '-' where nothing was timed (one generated token)."""
    return "-" if tps is None else f"{tps:.1f}"


def format_comparison(rows: list[dict], width: int = 100) -> str:
    """The side-by-side table; the answer column takes the width the others leave."""
    from mlx_slm.apps.table import render_table

    headers = ["model", "format", "answer", "prompt tok/s", "gen tok/s", "TTFT s", "MLX peak GB",
               "RSS GB"]
    body = [[
        display_name(r["model"]), r["format"], r["answer"], rate_cell(r["prompt_tps"]),
        rate_cell(r["generation_tps"]), f"{r['ttft_s']:.2f}", f"{r['peak_memory_gb']:.2f}",
        "-" if r["rss_gb"] is None else f"{r['rss_gb']:.2f}",
    ] for r in rows]
    others = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(headers) if i != 2]
    answer_width = max(24, width - sum(others) - 2 * (len(headers) - 1))
    return render_table(headers, body, right=frozenset(range(3, 8)), wrap={2: answer_width},
                        max_lines=6)
