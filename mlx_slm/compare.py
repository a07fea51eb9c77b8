"""One prompt, several models in turn: answers side by side with speed and memory."""

import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mlx_slm.chat_format import TURN_HEADERS, is_instruct, prompt_ids
from mlx_slm.sample import LogitsProcessor, Sampler, greedy

GB = 1e9


@dataclass
class LoadedModel:
    """A model loaded for its turn, with what was needed to find and load it."""

    name: str
    path: Path
    config: dict
    model: object
    tokenizer: object
    load_s: float


def load_each(names: list[str], dtype: str | None = None,
              force: bool = False) -> Iterator[LoadedModel]:
    """Load each model in turn, yield it, and free it before the next one loads.

    Every name is resolved and checked first, so a typo in the last one fails at once.
    MLX's peak-memory counter is reset before each load, so each peak is that model's own.
    """
    import mlx.core as mx

    from mlx_slm.loader import load
    from mlx_slm.memory_guard import check_fits
    from mlx_slm.session import resolve_model_dir
    from mlx_slm.stats import reset_mlx_peak
    from mlx_slm.weights import read_config

    resolved = []
    for name in names:
        path = resolve_model_dir(name)
        config = read_config(path)
        check_fits(path, config, dtype, force=force)
        resolved.append((name, path, config))
    for name, path, config in resolved:
        gc.collect()
        mx.clear_cache()
        reset_mlx_peak()
        start = time.perf_counter()
        model, tokenizer = load(path, dtype)
        loaded = LoadedModel(name, path, config, model, tokenizer, time.perf_counter() - start)
        del model
        yield loaded
        loaded.model = None
    gc.collect()
    mx.clear_cache()


def display_name(name: str) -> str:
    """A Hub id as is; a directory by its last component."""
    path = Path(name)
    return path.name if path.is_dir() else name


def memory_after() -> dict:
    """MLX's peak since the model's load, and the process's resident set now, in GB."""
    from mlx_slm.stats import current_rss_bytes, mlx_peak_bytes

    rss = current_rss_bytes()
    return {"peak_memory_gb": mlx_peak_bytes() / GB,
            "rss_after_gb": rss / GB if rss is not None else None}


def compare_models(prompt: str, names: list[str], *, chat: bool | None = None,
                   system: str | None = None, max_tokens: int = 128, sampler: Sampler = greedy,
                   logits_processors: list[LogitsProcessor] = (), seed: int | None = None,
                   dtype: str | None = None, force: bool = False,
                   on_model: Callable[[str], None] | None = None) -> list[dict]:
    """Ask each model `prompt` in the form that suits it (or the one `chat` forces)."""
    import mlx.core as mx

    from mlx_slm.generate import stream_text
    from mlx_slm.loader import model_dtype
    from mlx_slm.session import fit_to_context

    rows = []
    for loaded in load_each(names, dtype, force):
        if on_model is not None:
            on_model(loaded.name)
        model, tokenizer = loaded.model, loaded.tokenizer
        as_chat = is_instruct(loaded.config) if chat is None else chat
        ids = prompt_ids(tokenizer, prompt, as_chat, system)
        if seed is not None:
            mx.random.seed(seed)  # the same random stream for every model
        result = stream_text(
            model, tokenizer, ids,
            max_tokens=fit_to_context(len(ids), max_tokens, model.args.max_context_length),
            sampler=sampler, logits_processors=logits_processors,
            stop_strings=TURN_HEADERS if as_chat else (),
        )
        rows.append({
            "model": loaded.name,
            "format": "chat" if as_chat else "completion",
            "answer": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "generation_tokens": result.generation_tokens,
            "prompt_tps": result.prompt_tps,
            "generation_tps": result.generation_tps,
            "ttft_s": result.prompt_s,
            "load_s": loaded.load_s,
            "dtype": model_dtype(model),
            **memory_after(),
        })
        del model  # so that it is freed before the next model loads
    return rows


def format_comparison(rows: list[dict], width: int = 100) -> str:
    """The side-by-side table; the answer column takes the width the others leave."""
    from mlx_slm.table import render_table

    headers = ["model", "format", "answer", "prompt tok/s", "gen tok/s", "TTFT s", "MLX peak GB",
               "RSS GB"]
    body = [[
        display_name(r["model"]), r["format"], r["answer"], f"{r['prompt_tps']:.1f}",
        f"{r['generation_tps']:.1f}", f"{r['ttft_s']:.2f}", f"{r['peak_memory_gb']:.2f}",
        "-" if r["rss_after_gb"] is None else f"{r['rss_after_gb']:.2f}",
    ] for r in rows]
    others = [max([len(h)] + [len(b[i]) for b in body]) for i, h in enumerate(headers) if i != 2]
    answer_width = max(24, width - sum(others) - 2 * (len(headers) - 1))
    return render_table(headers, body, right=frozenset(range(3, 8)), wrap={2: answer_width},
                        max_lines=6)
