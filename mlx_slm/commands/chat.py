"""`mlx-slm chat`: an interactive chat in the Instruct format, the KV cache kept across turns."""

import sys

import click

from mlx_slm.commands.options import (
    constraint_options,
    dtype_option,
    force_option,
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
@dtype_option
@force_option
def chat(model, system, max_tokens, temperature, top_p, top_k, min_p, repetition_penalty,
         repetition_context, seed, constraint, dtype, force):
    """Chat with a model in the terminal.

    Every model is prompted in the Instruct chat format; base models were not tuned for it.
    Commands: /reset, /system TEXT, /stats, /help, /exit. Ctrl-C stops an answer.
    """
    import mlx.core as mx

    from mlx_slm.chat import ChatSession, repl
    from mlx_slm.chat_format import is_instruct
    from mlx_slm.loader import load
    from mlx_slm.memory_guard import check_fits
    from mlx_slm.sample import make_logits_processors, make_sampler
    from mlx_slm.session import reference_blas_hint, resolve_model_dir
    from mlx_slm.weights import read_config

    model_dir = resolve_model_dir(model)
    config = read_config(model_dir)
    check_fits(model_dir, config, dtype, force=force)
    loaded, tokenizer = load(model_dir, dtype)
    if seed is not None:
        mx.random.seed(seed)

    def note(text: str) -> None:
        click.echo(text, err=True)

    session = ChatSession(
        loaded, tokenizer, system=system, max_tokens=max_tokens,
        sampler=make_sampler(temperature, top_p, top_k, min_p),
        logits_processors=make_logits_processors(repetition_penalty, repetition_context),
        notify=note, constraint=constraint,
    )
    hint = reference_blas_hint()
    if hint:
        note(hint)
    if not is_instruct(config):
        note(f"[{model} is a base model, not tuned for chat: expect rambling; an -Instruct "
             "model suits chat]")
    note(f"[chatting with {model}; /help lists the commands, Ctrl-D leaves]")
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())

        repl(session)
    else:
        repl(session, prompt="")
