"""SentencePiece wrapper and the streaming detokenizer, with the real Llama-2 vocabulary."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_slm.errors import SlmError
from mlx_slm.tokenizer import Tokenizer
from tests.conftest import LLAMA2_TOKENIZER

TOKENIZER = Tokenizer(LLAMA2_TOKENIZER)


def stream(tokenizer, ids):
    detok = tokenizer.detokenizer()
    pieces = [detok.add(i) for i in ids] + [detok.finish()]
    return "".join(pieces)


def test_encode_prepends_bos_and_matches_published_ids():
    assert TOKENIZER.encode("The capital of California is") == [1, 450, 7483, 310, 8046, 338]
    assert TOKENIZER.encode("The", bos=False) == [450]
    assert TOKENIZER.sp.id_to_piece(13) == "<0x0A>"


@pytest.mark.parametrize("text", [
    "Hello, world!", "  leading spaces", "line\nbreak\n\n", "naïve café – 東京 😀🎉",
    "tabs\tand ⁇ odd marks", "",
])
def test_streamed_text_equals_full_decode(text):
    ids = TOKENIZER.encode(text, bos=False)
    assert stream(TOKENIZER, ids) == TOKENIZER.decode(ids) == text


def test_multibyte_character_split_across_byte_tokens_is_held_back():
    ids = TOKENIZER.encode("😀", bos=False)
    byte_ids = [i for i in ids if TOKENIZER.sp.is_byte(i)]
    assert len(byte_ids) == 4  # the emoji is four byte-fallback pieces
    detok = TOKENIZER.detokenizer()
    outputs = [detok.add(i) for i in ids]
    assert outputs[-1].endswith("😀") and "\ufffd" not in "".join(outputs)
    assert all(out == "" for out in outputs[-4:-1])


SPECIAL = st.sampled_from([0, 1, 2, 13, 29871, 259, 450, 3 + 0xE0, 3 + 0xBA, 3 + 0x80, 3 + 0xF0,
                           3 + 0x9F, 3 + 0x98, 3 + 0x41, 3 + 0xFF, 3 + 0xC3, 3 + 0xA9])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(SPECIAL, st.integers(0, 31999)), max_size=24))
def test_stream_equals_decode_on_arbitrary_ids(ids):
    assert stream(TOKENIZER, ids) == TOKENIZER.decode(ids)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_tokenizer_path):
    return Tokenizer(tiny_tokenizer_path)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_trained_tokenizer_round_trip_streams(tiny_tokenizer, text):
    ids = tiny_tokenizer.encode(text, bos=False)
    assert stream(tiny_tokenizer, ids) == tiny_tokenizer.decode(ids)


def test_missing_and_invalid_tokenizer_files(tmp_path):
    with pytest.raises(SlmError, match="tokenizer.model is missing"):
        Tokenizer(tmp_path / "tokenizer.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(SlmError, match="not a valid SentencePiece model"):
        Tokenizer(bad)
