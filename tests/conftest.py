import shutil
from pathlib import Path

import pytest

import mlx_slm  # noqa: F401  (puts the optimized BLAS under mlx before any test imports it)
from mlx_slm.synthetic import tiny_config, write_hub_checkpoint

DATA = Path(__file__).parent / "data"
LLAMA2_TOKENIZER = DATA / "llama2-tokenizer.model"


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    return LLAMA2_TOKENIZER


@pytest.fixture(scope="session")
def hub_checkpoint(tmp_path_factory) -> Path:
    """A tiny float32 checkpoint in the Hub layout (varying heads and FFN widths)."""
    return write_hub_checkpoint(tmp_path_factory.mktemp("hub") / "tiny", tiny_config(), seed=3)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, hub_checkpoint) -> Path:
    """The tiny checkpoint as a runnable model directory (weights + tokenizer)."""
    out = tmp_path_factory.mktemp("mlx") / "tiny"
    shutil.copytree(hub_checkpoint, out)
    shutil.copy(LLAMA2_TOKENIZER, out / "tokenizer.model")
    return out
