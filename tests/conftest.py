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


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    """A tokenizer trained by the tests: a small BPE vocabulary with byte fallback."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("spm")
    corpus = out / "corpus.txt"
    cities = ["capital", "city", "town", "state"] * 20
    places = ["ohio", "peru", "mali"] * 27
    corpus.write_text("\n".join(f"the {w} of {v} is near the river {i}"
                                for i, (w, v) in enumerate(zip(cities, places))))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out / "tiny"), vocab_size=300, model_type="bpe",
        byte_fallback=True, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )
    return out / "tiny.model"


@pytest.fixture(params=["float", "int8"])
def method(request):
    """A quantized-kernel test runs with float activations and with int8 ones (the default
    where the CPU has integer dot products); the process's setting is restored after."""
    from mlx_slm.cpu import kernels

    with kernels.int8_activations(request.param == "int8"):
        yield request.param
