"""The Python API: load, generate and stream_generate against the engine's own loop."""

import pytest

from mlx_slm.errors import SlmError
from mlx_slm.generation import Generation, generate_tokens
from mlx_slm.sample import SamplingOptions


def test_generate_equals_the_engines_greedy_tokens(model_dir):
    from mlx_slm import generate, load

    model, tokenizer = load(model_dir)
    text = generate(model, tokenizer, "Hello there", max_tokens=7,
                    sampling=SamplingOptions(repetition_penalty=1.0))
    expected = list(generate_tokens(model, tokenizer.encode("Hello there"), max_tokens=7,
                                    stop_ids=(tokenizer.eos_id,)))
    assert text == tokenizer.decode(expected)


def test_stream_generate_pieces_join_to_the_answer_and_fill_the_result(model_dir):
    from mlx_slm import generate, load, stream_generate

    model, tokenizer = load(model_dir)
    result = Generation()
    pieces = list(stream_generate(model, tokenizer, [1, 450, 7483], max_tokens=9,
                                  result=result))
    assert "".join(pieces) == result.text
    assert result.text == generate(model, tokenizer, [1, 450, 7483], max_tokens=9)
    assert len(result.tokens) == result.generation_tokens <= 9
    assert result.prompt_tokens == 3


def test_seeded_sampling_repeats(model_dir):
    from mlx_slm import generate, load

    model, tokenizer = load(model_dir)
    sampling = SamplingOptions(temperature=1.0, seed=7)
    first = generate(model, tokenizer, "Once", max_tokens=8, sampling=sampling)
    assert generate(model, tokenizer, "Once", max_tokens=8, sampling=sampling) == first


def test_load_refuses_a_missing_directory_with_one_line(tmp_path):
    from mlx_slm import load

    with pytest.raises(SlmError) as err:
        load(tmp_path / "nope")
    assert "\n" not in str(err.value) and "nope" in str(err.value)
