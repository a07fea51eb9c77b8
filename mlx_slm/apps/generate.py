"""What `mlx-slm generate` does, as a library call: resolve, load, generate, report."""

import io
import json
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlx_slm.apps.drafting import DraftOptions
from mlx_slm.chat_format import PromptFormat
from mlx_slm.errors import SlmError
from mlx_slm.loader import LoadOptions
from mlx_slm.sample import SamplingOptions

if TYPE_CHECKING:  # importing it loads the grammar engine, which only constrained runs need
    from mlx_slm.constrain import ConstraintSpec

DEFAULT_PROMPT = "What is the capital of California?"


@dataclass
class GenerationRequest:
    """One `generate` call: the model, the prompt, and the option objects the CLI built."""

    model: str
    prompt: str | None = None
    max_tokens: int = 256
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    load: LoadOptions = field(default_factory=LoadOptions)
    format: PromptFormat = field(default_factory=PromptFormat)
    draft: DraftOptions = field(default_factory=DraftOptions)
    ignore_eos: bool = False
    stop_strings: tuple[str, ...] = ()
    constraint: "ConstraintSpec | None" = None


def checked_prompt(prompt: str | None) -> str:
    """The prompt to use: DEFAULT_PROMPT when none was given; an empty one is an error
    rather than a silent switch to the default question, and so is one that is not UTF-8
    (checked before any model loads)."""
    from mlx_slm.tokenizer import require_utf8

    if prompt is None:
        return DEFAULT_PROMPT
    require_utf8(prompt)
    if not prompt.strip():
        raise SlmError("The prompt is empty; give one, or leave it out to ask the default "
                       f"question ({DEFAULT_PROMPT!r}).")
    return prompt


def stdin_prompt(explicit: bool) -> str | None:
    """The prompt on stdin, or None when there is none to read.

    `explicit` (-p -): always read, with a hint on a terminal. Otherwise a pipe or a file
    is read (so an empty one is an empty prompt, refused later), while a terminal or a
    device such as /dev/null (a script's `< /dev/null`) means no prompt. A stand-in stream
    without a file descriptor (an embedding program's or a test runner's) cannot say which
    it is: empty means none. Bytes that are not UTF-8 are kept (as surrogates) so that the
    tokenizer refuses them in one line, as it does for -p. Trailing newlines are dropped.
    """
    import os
    import stat

    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        mode = None
    if not explicit and mode is not None and not (
            stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)):
        return None
    if not explicit and mode is None and sys.stdin.isatty():
        return None
    if explicit and sys.stdin.isatty():
        print("[reading the prompt from the terminal; end it with Ctrl-D]", file=sys.stderr)
    text = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")
    # `echo TEXT |` ends with a newline that -p TEXT lacks (shells' $(...) drops it too).
    text = text.rstrip("\r\n") if text.strip() else text
    return None if not explicit and mode is None and not text else text


def run_generation(request: GenerationRequest, as_json: bool = False, out=None, err=None) -> int:
    """Generate for `request`, streaming text to `out` and stats to `err`; returns the exit code."""
    from mlx_slm.apps.drafting import check_combinable, draft_report, open_draft
    from mlx_slm.apps.model_loading import open_model
    from mlx_slm.apps.signals import interrupt_exit_code, sigterm_as_interrupt
    from mlx_slm.chooser import TokenChooser
    from mlx_slm.cpu.report import runtime_report
    from mlx_slm.generation import Generation, stream_text
    from mlx_slm.loader import model_dtype
    from mlx_slm.memory import memory_report, reset_mlx_peak

    out = out or sys.stdout
    err = err or sys.stderr
    check_combinable(request.draft, request.constraint)
    prompt = checked_prompt(request.prompt)
    request.sampling.sampler()  # bad sampling values fail before the model loads
    loaded = open_model(request.model, request.load)
    model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
    drafting = open_draft(request.draft, loaded.path, request.load.force)

    dtype_note = loaded.dtype_note(request.load.dtype)
    if dtype_note:
        print(dtype_note, file=err)
    note = request.format.note(config, loaded.source_name)
    if note:
        print(note, file=err)
    prepared = request.format.prepare(
        tokenizer, model.args, prompt, max_tokens=request.max_tokens,
        stop=request.stop_strings, name=loaded.source_name, turn_stops=not request.ignore_eos)
    if prepared.capped:
        print(f"[generation capped at {prepared.max_tokens} tokens by the "
              f"{model.args.max_context_length}-token context]", file=err)

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    hint = reference_blas_hint()
    if hint:
        print(hint, file=err)
    constraint = None
    if request.constraint is not None:
        from mlx_slm.constrain import Constraint, GrammarVocabulary

        constraint = Constraint(request.constraint, GrammarVocabulary(tokenizer))
    reset_mlx_peak()
    result = Generation(load_s=loaded.load_s)
    code = 0
    try:
        with sigterm_as_interrupt():  # SIGTERM ends it as Ctrl-C does, with the stats
            stream_text(
                model, tokenizer, prepared.ids, max_tokens=prepared.max_tokens,
                chooser=TokenChooser(request.sampling, prepared.ids, constraint),
                stop_strings=prepared.stop_strings, ignore_eos=request.ignore_eos,
                on_text=None if as_json else show, result=result,
                token_source=drafting.draft.generate_tokens if drafting else None,
            )
    except KeyboardInterrupt as stop:
        result.finish_reason = "interrupted"
        result.text = tokenizer.decode(result.tokens)
        if constraint is not None:
            result.valid = constraint.matches(result.text)
        code = interrupt_exit_code(stop)
    report = {
        "model": str(request.model),
        "text": result.text,
        "tokens": result.tokens,
        "prompt_tokens": result.prompt_tokens,
        "generation_tokens": result.generation_tokens,
        # None where there is nothing to time (one token: the clock starts at the first).
        "prompt_tps": result.prompt_tps or None,
        "generation_tps": result.generation_tps or None,
        "ttft_s": result.prompt_s,
        "load_s": result.load_s,
        **memory_report(),
        **runtime_report(),
        "dtype": model_dtype(model),
        "quantization": config.get("quantization"),
        "chat_format": prepared.chat,
        "finish_reason": result.finish_reason,
        # The settings that produced this text, so that it can be reproduced.
        "max_tokens": request.max_tokens,
        "sampling": request.sampling.as_dict(),
        "stop_strings": list(request.stop_strings),
        "ignore_eos": request.ignore_eos,
        "system": request.format.system,
        "constraint": None if constraint is None else {
            **request.constraint.describe(), "valid": result.valid},
    }
    if drafting:
        report["draft"] = draft_report(drafting)
    if as_json:
        out.write(json.dumps(report) + "\n")
    else:
        out.write("\n")
        out.flush()
        print(format_stats(report), file=err)
    return code


def reference_blas_hint() -> str | None:
    """On Linux's CPU backend with the reference BLAS: the one line that says how to fix it."""
    from mlx_slm.backend import active_backend
    from mlx_slm.cpu.blas import FIX_HINT, blas_in_use

    on_reference = active_backend() == "cpu" and blas_in_use() == "reference"
    if sys.platform.startswith("linux") and on_reference:
        return f"[hint: MLX uses the slow reference BLAS; for 20-100x faster float32: {FIX_HINT}]"
    return None


def tokens_at(count: int, tps: float | None) -> str:
    """'1 token' or '5 tokens, 12.3 tok/s' (no rate where none was measured)."""
    rate = "" if tps is None else f", {tps:.1f} tok/s"
    return f"{count} token{'' if count == 1 else 's'}{rate}"


def precision_name(report: dict) -> str:
    """'float16', or for a quantized model '4-bit (float32 compute)', '4-bit mixed ...'."""
    q = report.get("quantization")
    if not q:
        return report["dtype"]
    mixed = " mixed" if any(isinstance(v, dict) for v in q.values()) else ""
    return f"{q['bits']}-bit{mixed} ({report['dtype']} compute)"


def format_stats(report: dict) -> str:
    """The one stats line printed after a generation."""
    parts = [
        f"prompt: {tokens_at(report['prompt_tokens'], report['prompt_tps'])}",
        f"generation: {tokens_at(report['generation_tokens'], report['generation_tps'])}",
        # Each generate is a fresh process: its first token also pays MLX's one-time
        # compilation and warm-up, which `bench` excludes.
        f"TTFT {report['ttft_s']:.2f} s (cold: includes compiling)",
        f"load {report['load_s']:.2f} s",
        f"peak MLX {report['peak_memory_gb']:.2f} GB",
        f"peak RSS {report['peak_rss_gb']:.2f} GB",
    ]
    if "footprint_gb" in report:
        parts.append(f"footprint {report['footprint_gb']:.2f} GB")
    cpu = "" if report["backend"] != "cpu" else (
        f", BLAS {report['blas'].split(' ')[0]}, kernels {report['kernels']}")
    parts.append(f"{report['backend']} backend{cpu}, {precision_name(report)}")
    if "draft" in report:
        from mlx_slm.apps.drafting import format_draft_stats

        parts.append(format_draft_stats(report["draft"]))
    line = " | ".join(parts)
    if report["finish_reason"] == "interrupted":
        line = "[interrupted] " + line
    constraint = report.get("constraint")
    if constraint is not None and not constraint["valid"]:
        why = {"length": "it hit --max-tokens", "stop": "a stop string cut it"}.get(
            report["finish_reason"], "it was interrupted")
        line = f"[the output does not satisfy the {constraint['type']} constraint: {why}]\n" + line
    return line
