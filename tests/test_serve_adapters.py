"""An adapter served as a model of its own (`--lora NAME=DIR`): listed with its base, and
answering as `generate --adapter` does."""

import mlx.core as mx
import pytest

from mlx_slm import lora
from mlx_slm.adapters import save_adapter
from mlx_slm.apps.serve.run import BackgroundServer
from mlx_slm.apps.serve.worker import Settings
from mlx_slm.chooser import TokenChooser
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load, load_model
from tests.instruct_fixtures import make_model_dir
from tests.serve_fixtures import free_port

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = make_model_dir(root / "tiny-base", seed=4)
    model, _ = load_model(base, prepare=False)
    options = lora.LoRAOptions(rank=4, scale=4.0)
    mx.random.seed(0)
    lora.apply(model, options)
    for _, module in model.named_modules():  # a trained adapter's B is not zero
        if isinstance(module, lora.LoRALinear):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.5
    adapter = root / "adapter"
    adapter.mkdir()
    save_adapter(adapter, model, options)
    return str(base), str(adapter)


def greedy_text(directory: str, adapter: str | None, prompt: str) -> str:
    model, tokenizer = load(directory, adapter=adapter)
    ids = tokenizer.encode(prompt)
    tokens = generate_tokens(model, ids, max_tokens=12, stop_ids=(2,),
                             chooser=TokenChooser(history=ids))
    return tokenizer.decode(list(tokens))


def test_an_adapter_is_served_under_its_own_name(base_and_adapter):
    base, adapter = base_and_adapter
    settings = Settings(adapters=(("tuned", adapter),))
    with BackgroundServer([base], port=free_port(), settings=settings) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {base, "tuned"}
        assert cards["tuned"].model_extra == {"parent": base, "adapter": adapter}
        assert client.models.retrieve("tuned").model_extra["parent"] == base

        def ask(model: str) -> str:
            return client.completions.create(model=model, prompt="Hello there", max_tokens=12,
                                             temperature=0).choices[0].text

        tuned, plain = ask("tuned"), ask(base)
        assert tuned == greedy_text(base, adapter, "Hello there")
        assert plain == greedy_text(base, None, "Hello there")
        assert tuned != plain  # the adapter really changes the answer


def test_bad_lora_values_are_refused_in_one_line(base_and_adapter, tmp_path):
    from click.testing import CliRunner

    from mlx_slm.commands.cli import main

    base, adapter = base_and_adapter
    for value, message in ((f"{adapter}", "expected NAME=DIR"),
                           (f"{base}={adapter}", "already served"),
                           (f"x={tmp_path / 'nope'}", "is not a directory")):
        result = CliRunner().invoke(main, ["serve", "-m", base, "--lora", value])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
