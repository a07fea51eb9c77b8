"""`mlx-slm finetune` end to end on a tiny model: it learns, it reports, it masks."""

import json

import pytest
from click.testing import CliRunner

from mlx_slm.adapters import ADAPTER_CONFIG, ADAPTER_FILE
from mlx_slm.apps.api import generate
from mlx_slm.apps.finetune_data import DataOptions, load_dataset
from mlx_slm.apps.model_loading import open_model
from mlx_slm.chat_format import PromptFormat, Turn, conversation_ids
from mlx_slm.commands.cli import main
from mlx_slm.loader import LoadOptions
from mlx_slm.sample import SamplingOptions
from mlx_slm.tokenizer import Tokenizer
from tests.finetune_fixtures import LEARN, QA, write_chat_data, write_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_tokenizer_path):
    return write_tiny_model(tmp_path_factory.mktemp("ft") / "tiny", tiny_tokenizer_path)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return Tokenizer(tiny_dir / "tokenizer.model")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def answer(model, tokenizer, question: str) -> str:
    return generate(model, tokenizer, question, max_tokens=8,
                    sampling=SamplingOptions(repetition_penalty=1.0),
                    prompt_format=PromptFormat(chat=True)).strip()


def test_a_tiny_model_learns_its_training_answers_by_heart(tmp_path, tiny_dir):
    data = write_chat_data(tmp_path / "data")
    adapter = tmp_path / "adapter"
    result = run("finetune", "-m", tiny_dir, "--data", data, "--adapter-path", adapter,
                 *LEARN, "--steps-per-report", 10, "--steps-per-eval", 30, "--json")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    train = [e for e in events if e["event"] == "train"]
    valid = [e for e in events if e["event"] == "valid"]
    assert [e["step"] for e in train] == [10, 20, 30, 40, 50, 60]
    assert train[-1]["loss"] < 0.1 < train[0]["loss"]
    assert [e["step"] for e in valid] == [30, 60] and valid[-1]["val_loss"] < 0.1
    assert all(e["tokens_per_s"] > 0 and e["peak_memory_bytes"] > 0 for e in train)
    assert events[-1]["event"] == "done"
    assert {ADAPTER_FILE, ADAPTER_CONFIG} <= {p.name for p in adapter.iterdir()}

    before = open_model(str(tiny_dir))
    tuned = open_model(str(tiny_dir), LoadOptions(adapter=str(adapter)))
    assert [answer(tuned.model, tuned.tokenizer, q) for q, _ in QA] == [a for _, a in QA]
    assert [answer(before.model, before.tokenizer, q) for q, _ in QA] != [a for _, a in QA]


def test_an_existing_adapter_is_not_overwritten_without_asking(tmp_path, tiny_dir):
    data = write_chat_data(tmp_path / "data")
    adapter = tmp_path / "adapter"
    args = ("finetune", "-m", tiny_dir, "--data", data, "--adapter-path", adapter,
            "--iters", 2, "--batch-size", 2)
    assert run(*args).exit_code == 0
    refused = run(*args)
    assert refused.exit_code == 1 and "--overwrite" in refused.output
    assert run(*args, "--overwrite").exit_code == 0


def masked_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t, m in zip(example.ids, example.loss_mask) if m])


@pytest.mark.parametrize("kind", ["messages", "prompt-chat", "prompt-plain"])
def test_mask_prompt_puts_the_loss_on_the_answer_tokens_only(tmp_path, tokenizer, kind):
    question, reply = QA[0]
    record = ({"messages": [{"role": "user", "content": question},
                            {"role": "assistant", "content": reply}]}
              if kind == "messages" else {"prompt": question + " is", "completion": " " + reply})
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record) + "\n")
    chat = kind != "prompt-plain"
    masked = load_dataset(DataOptions(str(path), mask_prompt=True), tokenizer, chat)
    full = load_dataset(DataOptions(str(path)), tokenizer, chat)
    m, f = masked.splits["train"][0], full.splits["train"][0]
    assert m.ids == f.ids and m.ids[-1] == tokenizer.eos_id
    assert f.loss_mask == [False] + [True] * (len(f.ids) - 1)
    # Only the answer and its EOS carry loss; the answer's tokens are a suffix.
    assert m.loss_mask[-1] and sum(m.loss_mask) < sum(f.loss_mask)
    first = m.loss_mask.index(True)
    assert all(m.loss_mask[first:]) and not any(m.loss_mask[:first])
    assert masked_text(tokenizer, m).strip() == reply
    if chat:
        question = record.get("prompt", question)
        answer_text = record.get("completion", reply)
        turns = [Turn("user", question), Turn("assistant", answer_text)]
        assert m.ids == conversation_ids(tokenizer, turns, add_generation_prompt=False)


def test_the_python_api_takes_the_cli_options_by_name(tmp_path, tiny_dir):
    import mlx_slm
    from mlx_slm.adapters import read_adapter_config

    data = write_chat_data(tmp_path / "data", valid=False)
    events = []
    result = mlx_slm.finetune(str(tiny_dir), str(data), adapter_path=str(tmp_path / "a"),
                              iters=3, batch_size=2, rank=4, targets=["qkv_proj"],
                              num_layers=1, mask_prompt=True, steps_per_report=1,
                              on_event=events.append)
    assert result.steps == 3 and not result.interrupted and result.val_loss is None
    assert [e["step"] for e in events if e["event"] == "train"] == [1, 2, 3]
    config = read_adapter_config(tmp_path / "a")
    assert config["num_layers"] == 1
    assert config["lora_parameters"] == {"rank": 4, "scale": 20.0, "dropout": 0.0,
                                         "keys": ["attn.qkv_proj"]}
    with pytest.raises(TypeError, match="unknown option 'rnak'"):
        mlx_slm.finetune(str(tiny_dir), str(data), rnak=4)


def test_generate_applies_an_adapter_and_names_a_missing_one(tmp_path, tiny_dir):
    import mlx_slm

    data = write_chat_data(tmp_path / "data", valid=False)
    mlx_slm.finetune(str(tiny_dir), str(data), adapter_path=str(tmp_path / "a"), iters=2,
                     batch_size=2)
    args = ("generate", "-m", tiny_dir, "-p", "the capital of ohio", "-n", 3, "--chat")
    assert run(*args, "--adapter", tmp_path / "a").exit_code == 0
    missing = run(*args, "--adapter", tmp_path / "nope")
    assert missing.exit_code == 1
    assert missing.output.strip() == f"Error: Adapter directory {tmp_path / 'nope'} does not exist."


def test_a_run_that_will_not_fit_is_refused_up_front(tmp_path, tiny_dir):
    data = write_chat_data(tmp_path / "data")
    result = run("finetune", "-m", tiny_dir, "--data", data, "--adapter-path", tmp_path / "a",
                 "--batch-size", 4, "--max-seq-length", 10**9)
    assert result.exit_code == 1
    assert result.output.startswith("Error: This run needs about ")
    assert "--grad-checkpoint" in result.output and "--force" in result.output
    assert not (tmp_path / "a").exists()
