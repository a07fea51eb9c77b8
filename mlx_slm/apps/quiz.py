"""A quiz of simple factual questions: prompts that suit each model, batched answers, scoring.

Questions are JSON lines: {"question": str, "answer": str | [str, ...] (accepted spellings),
"wrong": [str, ...] (other candidates, optional), "cue": str (optional)}. Base models get a
completion cue ("Q: ...\\nA: {cue}"), Instruct models the chat format.
"""

import json
import re
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mlx_slm.chat_format import TURN_HEADERS, PromptFormat
from mlx_slm.chooser import GREEDY
from mlx_slm.errors import SlmError
from mlx_slm.generation import tokens_per_second
from mlx_slm.loader import LoadOptions
from mlx_slm.sample import SamplingOptions

BUILTIN = "data/quiz_capitals.jsonl"
KEYS = {"question", "answer", "wrong", "cue"}


@dataclass
class Question:
    """One question, the names that make an answer right, and those that make it wrong."""

    question: str
    answers: list[str]  # accepted spellings of the right answer
    wrong: list[str] = field(default_factory=list)  # names that would make it wrong
    cue: str | None = None  # how a completion of the answer begins, for base models


def builtin_questions() -> list[Question]:
    """The 50 US state capitals, each with the state's other big cities as wrong candidates."""
    text = resources.files("mlx_slm").joinpath(BUILTIN).read_text(encoding="utf-8")
    return parse_questions(text, BUILTIN)


def load_questions(path: str | Path) -> list[Question]:
    """The questions of a JSONL file; a bad line is an error naming it."""
    from mlx_slm.store.files import read_utf8

    text = read_utf8(path, "--questions takes a UTF-8 JSONL file")
    return parse_questions(text, str(path))


def parse_questions(text: str, source: str) -> list[Question]:
    """Validate JSON lines (blank lines skipped) into questions."""
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue

        def bad(why: str, number=number) -> SlmError:
            return SlmError(f"{source} line {number}: {why}.")

        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise bad(f"not valid JSON ({err.msg})") from None
        if not isinstance(item, dict):
            raise bad("must be a JSON object")
        unknown = sorted(set(item) - KEYS)
        if unknown:
            raise bad(f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(KEYS))})")
        question, answer = item.get("question"), item.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise bad('"question" must be a non-empty string')
        answers = [answer] if isinstance(answer, str) else answer
        if not _names(answers):
            raise bad('"answer" must be a non-empty string or a list of them')
        wrong = item.get("wrong", [])
        if not isinstance(wrong, list) or (wrong and not _names(wrong)):
            raise bad('"wrong" must be a list of non-empty strings')
        cue = item.get("cue")
        if cue is not None and not isinstance(cue, str):
            raise bad('"cue" must be a string')
        questions.append(Question(question.strip(), answers, wrong, cue or None))
    if not questions:
        raise SlmError(f"{source} holds no questions.")
    return questions


def _names(values) -> bool:
    return isinstance(values, list) and bool(values) and all(
        isinstance(v, str) and v.strip() for v in values
    )


def normalize(text: str) -> str:
    """Case- and diacritics-insensitive form: 'São Tomé' -> 'sao tome'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _mentions(text: str, names: list[str]) -> list[tuple[int, int]]:
    """(start, end) of every whole-word mention of any of `names` in normalized `text`."""
    spans = []
    for name in names:
        words = [re.escape(w) for w in normalize(name).split()]
        pattern = r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)"
        spans += [(m.start(), m.end()) for m in re.finditer(pattern, text)]
    return spans


HEDGE = re.compile(r"^[\s,;:(\-–—]*(?:or|and/or)(?!\w)")


def judge(answer: str, question: Question) -> str:
    """'right' if the right name comes before any other candidate and is not hedged with
    an 'or' to one; 'hedged' if it is; 'wrong' if another candidate comes first; 'none'
    if no candidate is named."""
    text = normalize(answer)
    right = _mentions(text, question.answers)
    wrong = _mentions(text, question.wrong)
    # Earliest mention first; at one position the longer name wins ("New York City").
    first = min([(s, -e, True) for s, e in right] + [(s, -e, False) for s, e in wrong],
                default=None)
    if first is None:
        return "none"
    start, neg_end, is_right = first
    if not is_right:
        return "wrong"
    later = [s for s, _ in wrong if s >= -neg_end]
    if later and HEDGE.match(text[-neg_end : min(later)]):
        return "hedged"
    return "right"


def completion_prompt(question: Question) -> str:
    """The cue that asks a base model: a Q/A pair whose answer the model completes."""
    cue = f" {question.cue}" if question.cue else ""
    return f"Q: {question.question}\nA:{cue}"


def candidates(question: Question) -> list[str]:
    """The answers a constrained quiz chooses among: the right one and the wrong ones."""
    return [question.answers[0], *question.wrong]


def cut_answer(text: str, chat: bool) -> tuple[str, bool]:
    """The answer text and whether it is complete: a chat answer ends at a turn header, a
    completion at the end of its first non-empty line."""
    if chat:
        hits = [i for i in (text.find(h) for h in TURN_HEADERS) if i >= 0]
        return (text[: min(hits)], True) if hits else (text, False)
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return (text[:end], True) if end >= 0 else (text, False)


@dataclass
class QuizRun:
    """One model's answers, verdicts and aggregate timings."""

    answers: list[str] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    timed_tokens: int = 0  # generated after each batch's first step, which starts the clock
    prompt_s: float = 0.0
    generation_s: float = 0.0

    @property
    def correct(self) -> int:
        return self.verdicts.count("right")

    @property
    def prompt_tps(self) -> float:
        return tokens_per_second(self.prompt_tokens, self.prompt_s)

    @property
    def generation_tps(self) -> float:
        return tokens_per_second(self.timed_tokens, self.generation_s)


def run_quiz(model, tokenizer, questions: list[Question], *, chat: bool,
             batch_size: int, system: str | None = None, max_tokens: int = 32,
             sampling: SamplingOptions = GREEDY,
             on_progress: Callable[[int, int], None] | None = None,
             clock: Callable[[], float] = time.perf_counter, constraint=None,
             constrained: bool = False) -> QuizRun:
    """Ask `questions` on the continuous batcher, `batch_size` at a time (a question joins
    as soon as another's answer ends); each row ends at EOS or at the end of its answer.

    Every answer obeys `constraint` (a mlx_slm.constrain.ConstraintSpec) if given; with
    `constrained`, each answer is a choice among its question's candidates. A seed gives
    each question the answer `generate --seed` gives it alone.
    """
    from mlx_slm.batch_generation import BatchGenerator, Row
    from mlx_slm.chooser import TokenChooser

    vocab = None
    if constraint is not None or constrained:
        from mlx_slm import constrain

        vocab = constrain.GrammarVocabulary(tokenizer)
    prompt_format = PromptFormat(chat=chat, system=system)

    def make_row(question: Question) -> Row:
        grammar = None
        if vocab is not None:
            spec = constrain.choice(candidates(question)) if constrained else constraint
            grammar = constrain.Constraint(spec, vocab)
        text = question.question if chat else completion_prompt(question)
        prepared = prompt_format.prepare(tokenizer, model.args, text, max_tokens=max_tokens)
        return Row(prepared.ids, TokenChooser(sampling, prepared.ids, grammar),
                   prepared.max_tokens, stop_ids=(tokenizer.eos_id,))

    run = QuizRun()
    rows = [make_row(q) for q in questions]
    generator = BatchGenerator(model)
    waiting, done = list(range(len(rows))), 0
    answered: set[int] = set()
    while waiting or len(generator):
        joining = waiting[: batch_size - len(generator)]
        waiting = waiting[len(joining) :]
        if joining:
            start = clock()
            generator.join([rows[i] for i in joining])
            run.prompt_s += clock() - start
            run.prompt_tokens += sum(len(rows[i].prompt) for i in joining)
        if len(generator):
            start, before = clock(), sum(len(r.tokens) for r in generator.rows)
            stepped = generator.step()
            run.generation_s += clock() - start
            run.timed_tokens += sum(len(r.tokens) for r in stepped) - before
        # An answer that is complete ends its row in the same step.
        for row in list(generator.rows):
            if cut_answer(tokenizer.decode(row.tokens), chat)[1]:
                row.end("stop")
                generator.leave(row)
        finished = [i for i, r in enumerate(rows)
                    if r.finish_reason is not None and i not in answered]
        for i in finished:
            answered.add(i)
        done += len(finished)
        if finished and on_progress is not None:
            on_progress(done, len(questions))
    for question, row in zip(questions, rows):
        answer = cut_answer(tokenizer.decode(row.tokens), chat)[0].strip()
        run.generation_tokens += len(row.tokens)
        run.answers.append(answer)
        run.verdicts.append(judge(answer, question))
    return run


def quiz_models(questions: list[Question], names: list[str], *, batch_size: int,
                prompt_format: PromptFormat = PromptFormat(), max_tokens: int = 32,
                sampling: SamplingOptions = SamplingOptions(),
                load: LoadOptions = LoadOptions(),
                on_progress: Callable[[str, int, int], None] | None = None,
                constraint=None, constrained: bool = False) -> list[dict]:
    """Quiz each model in turn, in the form that suits it (or the one the format forces);
    `constraint` and `constrained` as in `run_quiz`."""
    from mlx_slm.apps.compare import memory_after
    from mlx_slm.apps.model_loading import load_each
    from mlx_slm.loader import model_dtype

    results = []
    sampling.sampler()  # bad sampling values fail before any model loads
    for loaded in load_each(names, load):
        as_chat = prompt_format.uses_chat(loaded.config, loaded.source_name)

        def progress(done: int, total: int, name=loaded.name) -> None:
            if on_progress is not None:
                on_progress(name, done, total)

        run = run_quiz(
            loaded.model, loaded.tokenizer, questions, chat=as_chat,
            system=prompt_format.system, batch_size=batch_size, max_tokens=max_tokens,
            sampling=sampling, on_progress=progress,
            constraint=constraint, constrained=constrained,
        )
        results.append({
            "model": loaded.name,
            "format": "chat" if as_chat else "completion",
            "constraint": ({"type": "choice", "value": "each question's candidates"}
                           if constrained else constraint and constraint.describe()),
            "correct": run.correct,
            "total": len(questions),
            "accuracy": run.correct / len(questions),
            "prompt_tokens": run.prompt_tokens,
            "generation_tokens": run.generation_tokens,
            "prompt_tps": run.prompt_tps or None,  # None: nothing timed (one token each)
            "generation_tps": run.generation_tps or None,
            "load_s": loaded.load_s,
            "dtype": model_dtype(loaded.model),
            **memory_after(),
            "answers": [
                {"question": q.question, "expected": q.answers[0], "answer": a, "verdict": v}
                for q, a, v in zip(questions, run.answers, run.verdicts)
            ],
        })
    return results


def format_quiz(results: list[dict]) -> str:
    """The table of accuracy, speed and memory per model."""
    from mlx_slm.apps.compare import display_name, rate_cell
    from mlx_slm.apps.table import render_table

    headers = ["model", "format", "accuracy", "prompt tok/s", "gen tok/s", "MLX peak GB",
               "RSS GB"]
    rows = [[
        display_name(r["model"]), r["format"] + (", constrained" if r["constraint"] else ""),
        f"{r['correct']}/{r['total']} ({100 * r['accuracy']:.0f}%)",
        rate_cell(r["prompt_tps"]), rate_cell(r["generation_tps"]), f"{r['peak_memory_gb']:.2f}",
        "-" if r["rss_gb"] is None else f"{r['rss_gb']:.2f}",
    ] for r in results]
    return render_table(headers, rows, right=frozenset(range(2, 7)))
