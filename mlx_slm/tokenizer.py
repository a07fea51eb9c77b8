"""The Llama-2 SentencePiece tokenizer that OpenELM uses, and a streaming detokenizer."""

import codecs
from pathlib import Path

from mlx_slm.errors import SlmError

TOKENIZER_FILE = "tokenizer.model"
SPACE = "\u2581"  # SentencePiece's word-boundary mark
REPLACEMENT = "\ufffd"


class Tokenizer:
    """Encodes with BOS prepended; decodes exactly as SentencePiece does."""

    def __init__(self, path: Path):
        import sentencepiece

        path = Path(path)
        if not path.is_file():
            raise SlmError(
                f"{path} is missing: the model directory needs the Llama-2 tokenizer.model "
                "(re-convert with `mlx-slm convert --tokenizer PATH`)."
            )
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.load(str(path))
        except (OSError, RuntimeError):
            raise SlmError(f"{path} is not a valid SentencePiece model; replace it.") from None
        self.path = path
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self._pieces = None

    @property
    def vocab_size(self) -> int:
        return self.sp.vocab_size()

    def encode(self, text: str, bos: bool = True) -> list[int]:
        require_utf8(text)
        ids = self.sp.encode(text)
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece_table(self) -> list:
        """Per id: None for control tokens, an int for byte pieces, else the piece's text."""
        if self._pieces is None:
            sp = self.sp
            table = []
            for i in range(sp.vocab_size()):
                if sp.is_control(i):
                    table.append(None)
                elif sp.is_byte(i):
                    table.append(int(sp.id_to_piece(i)[3:5], 16))
                elif sp.is_unknown(i):
                    table.append(" \u2047 ")  # SentencePiece's surface for <unk>
                else:
                    table.append(sp.id_to_piece(i).replace(SPACE, " "))
            self._pieces = table
        return self._pieces

    def detokenizer(self) -> "StreamingDetokenizer":
        return StreamingDetokenizer(self.piece_table(), self.sp.unk_id())


def require_utf8(text: str) -> None:
    """Refuse text that cannot be UTF-8 (bytes that were not UTF-8, kept as lone surrogates
    by Python's argv and surrogateescape decoding), which SentencePiece cannot take."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        around = text[max(err.start - 20, 0):err.end + 20]
        raise SlmError(f"The text is not valid UTF-8 (at character {err.start}: {around!r}); "
                       "give UTF-8 text.") from None


def _one_per_byte(err: UnicodeDecodeError) -> tuple[str, int]:
    """SentencePiece's rule: every invalid byte becomes one U+FFFD."""
    return REPLACEMENT * (err.end - err.start), err.end


codecs.register_error("mlx_slm.one_per_byte", _one_per_byte)


class StreamingDetokenizer:
    """Turns token ids into text as they arrive.

    The concatenation of everything `add` and `finish` return equals
    `sp.decode(all_ids)`: byte-fallback pieces go through an incremental UTF-8 decoder, so
    a character split across pieces comes out whole (invalid bytes become one U+FFFD
    each, as SentencePiece does), and the leading space of the first piece is dropped as
    SentencePiece drops it.
    """

    def __init__(self, pieces: list, unk_id: int):
        self.pieces = pieces
        self.unk_id = unk_id
        self.bytes = codecs.getincrementaldecoder("utf-8")("mlx_slm.one_per_byte")
        self.started = False
        self.text = ""

    def add(self, token: int) -> str:
        piece = self.pieces[token] if 0 <= token < len(self.pieces) else None
        if piece is None:  # control token: emits nothing but ends a byte run
            return self._emit(self._flush_bytes())
        if isinstance(piece, int):
            return self._emit(self.bytes.decode(bytes([piece])))
        out = self._flush_bytes()
        if not self.started and token != self.unk_id and piece.startswith(" "):
            piece = piece[1:]
        self.started = True
        return self._emit(out + piece)

    def finish(self) -> str:
        return self._emit(self._flush_bytes())

    def _emit(self, text: str) -> str:
        if text:
            self.started = True
        self.text += text
        return text

    def _flush_bytes(self) -> str:
        out = self.bytes.decode(b"", final=True)
        if out:
            self.started = True
        return out


class TextStream:
    """Token ids -> text pieces, ending at the first stop string (which is never emitted).

    The one place a stop string is found: whoever decodes a sequence feeds it each token
    and sees `stopped` in the same step. The beginning of a possible stop string is held
    back until it is decided.
    """

    def __init__(self, tokenizer: Tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.detokenizer = tokenizer.detokenizer()
        self.stop = tuple(s for s in stop if s)
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.emitted = 0
        self.stopped = False

    def token_text(self, token: int) -> str:
        """One token's own piece as text (log-prob listings show it)."""
        return self.tokenizer.sp.id_to_piece(token).replace(SPACE, " ")

    @property
    def text(self) -> str:
        """The text so far, up to a stop string (held-back characters included)."""
        return self.detokenizer.text[: self.emitted] if self.stopped else self.detokenizer.text

    def add(self, token: int) -> str:
        """The text that `token` releases ("" after a stop string)."""
        if self.stopped:
            return ""
        self.detokenizer.add(token)
        return self._release(final=False)

    def finish(self) -> str:
        """What was held back, once no token follows."""
        if self.stopped:
            return ""
        self.detokenizer.finish()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.detokenizer.text
        hits = [i for i in (text.find(s, max(0, self.emitted - self.holdback))
                            for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(text) if final or not self.stop else len(text) - self.holdback
        if end <= self.emitted:
            return ""
        piece, self.emitted = text[self.emitted : end], end
        return piece
