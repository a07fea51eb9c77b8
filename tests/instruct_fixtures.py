"""Tiny runnable model directories and scripted samplers for the Instruct-feature tests.

The output head is untied: with the tied embedding a tiny random model keeps repeating its
last token, which would hide position and cache mistakes; untied, its greedy tokens vary.
"""

import shutil
from pathlib import Path

from mlx_slm.sample import greedy
from mlx_slm.store.files import write_json
from mlx_slm.synthetic import random_weights, tiny_config
from mlx_slm.weights import save_weights
from tests.conftest import LLAMA2_TOKENIZER


def make_model_dir(out: Path, instruct: bool = False, seed: int = 3, **overrides) -> Path:
    """Config (with the converter's Instruct flag), weights and the real tokenizer."""
    out = Path(out)
    out.mkdir(parents=True)
    config = tiny_config(share_input_output_layers=False, **overrides)
    write_json(out / "config.json", {**config, "mlx_slm": {"instruct": instruct}})
    save_weights(out, random_weights(config, seed=seed))
    shutil.copy(LLAMA2_TOKENIZER, out / "tokenizer.model")
    return out


def scripted_sampler(script: dict[int, int | BaseException]):
    """Greedy, except on the calls numbered in `script` (from 0): a token id to return, or
    an exception to raise (KeyboardInterrupt stands in for Ctrl-C)."""
    import mlx.core as mx

    calls = []

    def sample(logprobs, key=None):
        n = len(calls)
        calls.append(n)
        action = script.get(n)
        if isinstance(action, BaseException):
            raise action
        if action is not None:
            return mx.array([action] * logprobs.shape[0], dtype=mx.uint32)
        return greedy(logprobs)

    sample.calls = calls
    return sample


def instruct_and_base(root: Path) -> tuple[Path, Path]:
    """A tiny Instruct model and a tiny base model (another seed) under `root`."""
    return (make_model_dir(root / "tiny-Instruct", instruct=True),
            make_model_dir(root / "tiny-base", seed=4))
