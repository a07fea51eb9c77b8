"""`mlx-slm chat`: an interactive chat in the Instruct format, the KV cache kept across turns."""

import sys

import click

from mlx_slm.commands.options import (
    constraint_options,
    draft_options,
    load_options,
    model_option,
    sampling_options,
)


@click.command()
@model_option
@click.option("--system", default=None, help="System message (change it later with /system).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=512, show_default=True,
              help="Most tokens per answer.")
@sampling_options
@constraint_options
@load_options
@draft_options
def chat(model, system, max_tokens, sampling, constraint, load, draft):
    """Chat with a model in the terminal.

    Every model is prompted in the Instruct chat format; base models were not tuned for it.
    Commands: /reset, /system TEXT, /stats, /help, /exit. Ctrl-C stops an answer.
    """
    from mlx_slm.apps.chat import ChatSession, repl
    from mlx_slm.apps.drafting import check_combinable, open_draft
    from mlx_slm.apps.generate import reference_blas_hint
    from mlx_slm.apps.model_loading import open_model
    from mlx_slm.apps.signals import sigterm_as_interrupt
    from mlx_slm.chat_format import is_instruct
    from mlx_slm.tokenizer import require_utf8

    check_combinable(draft, constraint)
    if system:
        require_utf8(system)
    # A line that is not UTF-8 reaches the tokenizer, which refuses it in one line, and the
    # chat goes on (strict decoding would end it with a traceback).
    sys.stdin.reconfigure(errors="surrogateescape")
    loaded = open_model(model, load)
    drafting = open_draft(draft, loaded.path, load.force)

    def note(text: str) -> None:
        click.echo(text, err=True)

    session = ChatSession(
        loaded.model, loaded.tokenizer, system=system, max_tokens=max_tokens,
        sampling=sampling, notify=note, constraint=constraint,
        draft=drafting.draft if drafting else None,
    )
    for line in (reference_blas_hint(), loaded.dtype_note(load.dtype)):
        if line:
            note(line)
    if not is_instruct(loaded.config, loaded.source_name):
        note(f"[{model} is a base model, not tuned for chat: expect rambling; an -Instruct "
             "model suits chat]")
    note(f"[chatting with {model}; /help lists the commands, Ctrl-D leaves]")
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    # SIGTERM ends an answer as Ctrl-C does, then the chat (exit 143).
    with sigterm_as_interrupt() as sigterm:
        code = repl(session, prompt="> " if sys.stdin.isatty() else "",
                    terminated=lambda: sigterm.received)
    sys.exit(code)
