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
