"""The server's greedy text equals `generate`'s at every precision, a request alone or
eight at once: both choose with the same token chooser, and the batcher gives each row
what it gets alone."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from mlx_slm.apps.quantize import quantize_directory
from mlx_slm.apps.serve.run import BackgroundServer
from mlx_slm.chooser import TokenChooser
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import LoadOptions, load
from tests.instruct_fixtures import make_model_dir
from tests.serve_fixtures import free_port

openai = pytest.importorskip("openai")

PROMPTS = ["Hi", "The river", "Once upon a time", "A list: one, two,", "Why is the sky",
           "Tell me about", "Numbers: 1 2 3", "Dear friend,"]
TOKENS = 24


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    base = make_model_dir(root / "tiny-base", seed=4)
    quantized = root / "tiny-base-4bit"
    quantize_directory(base, quantized, bits=4, group_size=32)
    return {"float32": (base, None), "bfloat16": (base, "bfloat16"), "4-bit": (quantized, None)}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "4-bit"])
def test_served_greedy_equals_generate_alone_and_batched(dirs, precision):
    directory, dtype = dirs[precision]
    model, tokenizer = load(directory, dtype)
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        tokens = list(generate_tokens(model, ids, max_tokens=TOKENS, stop_ids=(2,),
                                      chooser=TokenChooser(history=ids)))
        expected.append(tokenizer.decode(tokens))
    assert len(set(expected)) == len(PROMPTS)  # the answers really differ
    with BackgroundServer([str(directory)], port=free_port(),
                          load=LoadOptions(dtype=dtype)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(prompt: str) -> str:
            return client.completions.create(model=str(directory), prompt=prompt,
                                             max_tokens=TOKENS, temperature=0
                                             ).choices[0].text

        assert [ask(p) for p in PROMPTS] == expected, "alone"
        server.worker.peak_running = 0
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            assert list(pool.map(ask, PROMPTS)) == expected, "batched"
        assert server.worker.peak_running >= 4  # they really decoded together
