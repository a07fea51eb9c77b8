"""The shipped example dataset loads cleanly and keeps its held-out states out of training."""

import json
from pathlib import Path

from mlx_slm.apps.finetune_data import DataOptions, load_dataset
from mlx_slm.apps.quiz import load_questions
from mlx_slm.tokenizer import Tokenizer
from tests.conftest import LLAMA2_TOKENIZER

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "finetune" / "capitals"


def states(path: Path) -> set[str]:
    found = set()
    for line in path.read_text().splitlines():
        answer = json.loads(line)["messages"][-1]["content"]
        found.add(answer.removeprefix("The capital of ").split(" is ")[0])
    return found


def test_the_capitals_example_loads_and_holds_out_its_test_states():
    data = load_dataset(DataOptions(str(EXAMPLE), max_seq_length=128, mask_prompt=True),
                        Tokenizer(LLAMA2_TOKENIZER), chat=True)
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [140, 10, 10]
    assert not data.cut
    held_out = states(EXAMPLE / "test.jsonl")
    assert len(held_out) == 10
    assert not held_out & (states(EXAMPLE / "train.jsonl") | states(EXAMPLE / "valid.jsonl"))
    quiz = load_questions(EXAMPLE / "quiz_heldout.jsonl")
    assert {q.question.removeprefix("What is the capital of ").rstrip("?")
            for q in quiz} == held_out
