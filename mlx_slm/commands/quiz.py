"""`mlx-slm quiz`: ask models simple factual questions, score them, report a table."""

import click

from mlx_slm.commands.options import (
    constraint_options,
    dtype_option,
    force_option,
    format_options,
    sampling_options,
)
from mlx_slm.errors import SlmError

# Measured on 2 busy, shared x86 cores (synthetic 270M, float32, chat prompts, 16 tokens
# each; noisy): batch 16 answered 16 questions in 12.9-13.5 s, one at a time took 2.5-5.5 s
# per question. A step's per-token overhead and weight reads are shared by the batch.
DEFAULT_BATCH = 16


@click.command()
@click.option("--model", "-m", "models", multiple=True, required=True,
              help="A model directory or Hub repo id (repeat for each model).")
@click.option("--questions", "questions_file", type=click.Path(dir_okay=False), default=None,
              help="A JSONL file of questions instead of the built-in 50 US state capitals.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Ask only the first N questions.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH,
              show_default=True, help="Questions answered together (1 = one at a time).")
@click.option("--max-tokens", "-n", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most tokens per answer.")
@sampling_options
@click.option("--constrained", is_flag=True,
              help="Answer each question with exactly one of its candidates (the right "
                   "answer and the wrong ones): knowledge without the format.")
@constraint_options
@format_options
@dtype_option
@force_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (with every answer and verdict) instead of a table.")
def quiz(models, questions_file, limit, batch_size, max_tokens, temperature, top_p, top_k,
         min_p, repetition_penalty, repetition_context, seed, constrained, constraint, chat,
         system, dtype, force, as_json):
    """Ask models simple factual questions and score their answers.

    An answer is right when it names the right answer before any other candidate (the
    state's other big cities, for the built-in capitals) and does not hedge it with "or".
    With --constrained (or another constraint) every answer has the given form.
    """
    import json

    from mlx_slm.blas import blas_in_use
    from mlx_slm.quiz import builtin_questions, format_quiz, load_questions, quiz_models
    from mlx_slm.sample import make_logits_processors, make_sampler
    from mlx_slm.session import reference_blas_hint
    from mlx_slm.stats import backend

    if constrained and constraint is not None:
        raise SlmError("--constrained chooses among each question's candidates; drop the "
                       "other constraint option.")
    questions = load_questions(questions_file) if questions_file else builtin_questions()
    questions = questions[:limit] if limit else questions
    hint = reference_blas_hint()
    if hint:
        click.echo(hint, err=True)

    def progress(name: str, done: int, total: int) -> None:
        click.echo(f"[{name}] {done}/{total} questions", err=True)

    results = quiz_models(
        questions, list(models), chat=chat, system=system, batch_size=batch_size,
        max_tokens=max_tokens, sampler=make_sampler(temperature, top_p, top_k, min_p),
        logits_processors=make_logits_processors(repetition_penalty, repetition_context),
        seed=seed, dtype=dtype, force=force, on_progress=progress, constraint=constraint,
        constrained=constrained,
    )
    if as_json:
        report = {"questions": len(questions), "backend": backend(), "blas": blas_in_use(),
                  "batch_size": batch_size, "results": results}
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_quiz(results))
    click.echo(f"\n{backend()} backend, batch size {batch_size}: tok/s are totals over each "
               "batch's rows, not single-stream speeds.")
