"""A tiny model that LoRA can teach quickly, and question/answer data in each format.

Its weights are drawn wider than the synthetic default (std 0.3, not 0.02): with the tied
embedding at 0.02 the logits cannot leave a narrow range, and no adapter can make a
confident prediction.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx

from mlx_slm.store.files import write_json
from mlx_slm.synthetic import random_weights, tiny_config
from mlx_slm.weights import CONFIG_FILE, save_weights

QA = [("the capital of ohio", "mali"), ("the city of peru", "ohio"),
      ("the town of mali", "peru"), ("the state of ohio", "river")]
# Settings under which the tiny model learns QA by heart in a few seconds.
LEARN = ["--iters", "60", "--lr", "2e-3", "--min-learning-rate", "2e-3", "--batch-size", "4",
         "--mask-prompt"]


def write_tiny_model(out: Path, tokenizer: Path, seed: int = 3) -> Path:
    config = tiny_config(vocab_size=300)
    weights = random_weights(config, seed, std=0.3)
    mx.eval(weights)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG_FILE, config)
    save_weights(out, weights)
    shutil.copy(tokenizer, out / "tokenizer.model")
    return out


def chat_line(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]})


def write_chat_data(folder: Path, valid: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(chat_line(q, a) for q, a in QA) + "\n")
    if valid:
        (folder / "valid.jsonl").write_text("\n".join(chat_line(q, a) for q, a in QA[:2]))
    return folder
