"""The Instruct prompt format at the token level, with the real Llama-2 tokenizer."""

import pytest
import sentencepiece as spm

from mlx_slm.chat_format import (
    TURN_HEADERS,
    Turn,
    conversation_ids,
    is_instruct,
    prompt_ids,
    turn_ids,
)
from mlx_slm.tokenizer import Tokenizer
from tests.conftest import LLAMA2_TOKENIZER

TOKENIZER = Tokenizer(LLAMA2_TOKENIZER)
SP = spm.SentencePieceProcessor(model_file=str(LLAMA2_TOKENIZER))
BOS, EOS = 1, 2


def by_hand(segments: list[str]) -> list[int]:
    """The template's text split at every </s>, each piece encoded on its own (so each gets
    SentencePiece's leading '▁'), joined by id 2, BOS first."""
    ids = [BOS]
    for i, segment in enumerate(segments):
        ids += ([EOS] if i else []) + SP.encode(segment)
    return ids


def test_one_question_with_the_empty_system_turn():
    ids = conversation_ids(TOKENIZER, [Turn("user", "What is the capital of California?")])
    expected = by_hand([
        "<|system|>\n",
        "\n<|user|>\nWhat is the capital of California?",
        "\n<|assistant|>\n",
    ])
    assert ids == expected
    assert ids[:7] == [1, 529, 29989, 5205, 29989, 29958, 13]  # <s> ▁< | system | > \n
    assert ids[7:10] == [2, 29871, 13]  # </s>, then "▁" and the newline opening the next turn
    assert ids[-9:] == [29871, 13, 29966, 29989, 465, 22137, 29989, 29958, 13]
    assert [i for i, t in enumerate(ids) if t == EOS] == [7, 23]


def test_multi_turn_conversation_with_a_system_message():
    turns = [Turn("user", "Hi!"), Turn("assistant", "Hello. How can I help?"),
             Turn("user", "Name a state.")]
    ids = conversation_ids(TOKENIZER, turns, system="Be brief.")
    assert ids == by_hand([
        "<|system|>\nBe brief.",
        "\n<|user|>\nHi!",
        "\n<|assistant|>\nHello. How can I help?",
        "\n<|user|>\nName a state.",
        "\n<|assistant|>\n",
    ])
    assert ids.count(BOS) == 1 and ids.count(EOS) == 4
    closed = conversation_ids(TOKENIZER, turns[:2], "Be brief.", add_generation_prompt=False)
    assert closed[-1] == EOS and ids[: len(closed)] == closed


def test_an_answer_kept_as_ids_equals_its_encoded_text():
    text = "The capital of California is Sacramento."
    generated = SP.encode("\n" + text)[2:]  # as a model writes it after "\n": no leading "▁"
    as_text = turn_ids(TOKENIZER, Turn("assistant", text), first=False)
    as_ids = turn_ids(TOKENIZER, Turn("assistant", text, ids=generated), first=False)
    assert as_ids == as_text and as_ids[-1] == EOS
    # Ids win over the text: they are what the model saw.
    odd = turn_ids(TOKENIZER, Turn("assistant", "ignored", ids=[42]), first=False)
    assert odd == SP.encode("\n<|assistant|>\n") + [42, EOS]


def test_completion_prompt_is_bos_and_the_text():
    assert prompt_ids(TOKENIZER, "The capital of California is", chat=False) == [
        1, 450, 7483, 310, 8046, 338]
    assert prompt_ids(TOKENIZER, "Hi", chat=True) == conversation_ids(
        TOKENIZER, [Turn("user", "Hi")])


def test_system_turns_are_given_as_system():
    with pytest.raises(ValueError, match="unexpected role 'system'"):
        conversation_ids(TOKENIZER, [Turn("system", "x")])


@pytest.mark.parametrize("meta, expected", [
    (None, False),
    ({"instruct": True}, True),
    ({"instruct": False, "source": "apple/OpenELM-270M-Instruct"}, False),
    ({"source": "apple/OpenELM-450M-Instruct"}, True),
    ({"source": "apple/OpenELM-450M"}, False),
])
def test_instruct_models_are_known_from_the_converter_metadata(meta, expected):
    config = {"model_type": "openelm"} | ({"mlx_slm": meta} if meta is not None else {})
    assert is_instruct(config) is expected


def test_the_stop_strings_are_the_headers_the_format_writes():
    turns = [Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "Bye")]
    text = SP.decode(conversation_ids(TOKENIZER, turns, "Be brief.", True))
    found = [text.find(h) for h in TURN_HEADERS]
    assert all(i >= 0 for i in found)  # a model that writes the next header is stopped there
    assert found == sorted(found)  # system, user, assistant, in the order they are written
