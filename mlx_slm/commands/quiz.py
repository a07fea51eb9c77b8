"""`mlx-slm quiz`: ask models simple factual questions, score them, report a table."""

import click

from mlx_slm.commands.options import (
    constraint_options,
    format_options,
    load_options,
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
@load_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (with every answer and verdict) instead of a table.")
def quiz(models, questions_file, limit, batch_size, max_tokens, sampling, constrained,
         constraint, prompt_format, load, as_json):
    """Ask models simple factual questions and score their answers.

    An answer is right when it names the right answer before any other candidate (the
    state's other big cities, for the built-in capitals) and does not hedge it with "or".
    With --constrained (or another constraint) every answer has the given form.
    """
    import json

    from mlx_slm.apps.generate import reference_blas_hint
    from mlx_slm.apps.quiz import builtin_questions, format_quiz, load_questions, quiz_models
    from mlx_slm.backend import active_backend
    from mlx_slm.cpu.report import runtime_report

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
        questions, list(models), prompt_format=prompt_format, batch_size=batch_size,
        max_tokens=max_tokens, sampling=sampling, load=load, on_progress=progress,
        constraint=constraint, constrained=constrained,
    )
    if as_json:
        report = {"questions": len(questions), **runtime_report(),
                  "batch_size": batch_size, "max_tokens": max_tokens,
                  "sampling": sampling.as_dict(), "system": prompt_format.system,
                  "results": results}
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(format_quiz(results))
    click.echo(f"\n{active_backend()} backend, batch size {batch_size}: tok/s are totals over each "
               "batch's rows, not single-stream speeds.")
