"""Structured output: a grammar (JSON schema, any JSON object, regex, fixed choices) that masks
the logits so every generated text belongs to it. The grammar engine is llguidance.

The grammar constrains the decoded text, which is not quite the concatenation of the token
pieces: SentencePiece drops the leading space of the first piece. The first step is therefore
masked as if every piece's leading space were gone (a second view of the vocabulary), and the
bytes the first token actually decodes to are fed to the grammar.
"""

import json
from dataclasses import dataclass

import llguidance
import mlx.core as mx
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from mlx_slm.errors import SlmError
from mlx_slm.tokenizer import Tokenizer

# Fixed separators, not free whitespace: a model cannot wander in blanks, and output is tidy.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
KINDS = ("json_schema", "json_object", "regex", "choice", "lark")


@dataclass(frozen=True)
class ConstraintSpec:
    """What the output must be: `kind` is one of KINDS; `value` the schema (as JSON text), the
    pattern or the choices. `grammar` is llguidance's form of it, checked when made."""

    kind: str
    value: str | tuple[str, ...] | None
    grammar: str

    def describe(self) -> dict:
        """The constraint as reported in machine-readable output."""
        value = json.loads(self.value) if self.kind == "json_schema" else self.value
        return {"type": self.kind, "value": list(value) if self.kind == "choice" else value}


def json_schema(schema: dict | str) -> ConstraintSpec:
    """Output is JSON valid under `schema` (a dict, or its JSON text)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as err:
            raise SlmError(f"The JSON schema is not valid JSON: {err}.") from None
    if not isinstance(schema, dict):
        raise SlmError("The JSON schema must be a JSON object.")
    text = json.dumps(schema)
    return _checked("json_schema", text,
                    llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_OPTIONS))


def json_object() -> ConstraintSpec:
    """Output is any JSON object."""
    grammar = llguidance.LLMatcher.grammar_from_json_schema({"type": "object"},
                                                            defaults=JSON_OPTIONS)
    return _checked("json_object", None, grammar)


def regex(pattern: str) -> ConstraintSpec:
    """Output matches `pattern` as a whole (Rust `regex` syntax, close to Python's `re`)."""
    return _checked("regex", pattern, llguidance.LLMatcher.grammar_from_regex(pattern))


def choice(options: list[str] | tuple[str, ...]) -> ConstraintSpec:
    """Output is exactly one of `options`."""
    options = tuple(options)
    if not options or any(not isinstance(o, str) or not o for o in options):
        raise SlmError("Each choice must be a non-empty string, and at least one is needed.")
    lark = "start: " + " | ".join(json.dumps(o) for o in dict.fromkeys(options))
    return _checked("choice", options, llguidance.LLMatcher.grammar_from_lark(lark))


def lark(grammar: str) -> ConstraintSpec:
    """Output belongs to a grammar in llguidance's Lark syntax (which can embed JSON schemas
    with `%json`): for forms that mix text and JSON, such as the server's tool calls."""
    return _checked("lark", grammar, llguidance.LLMatcher.grammar_from_lark(grammar))


def _checked(kind: str, value, grammar: str) -> ConstraintSpec:
    message = llguidance.LLMatcher.validate_grammar(grammar)
    if message:
        what = {"json_schema": "JSON schema", "regex": "regular expression"}.get(kind, kind)
        shown = f" {value!r}" if kind == "regex" else ""
        raise SlmError(f"Invalid {what}{shown}: {_one_line(message)}")
    return ConstraintSpec(kind, value, grammar)


def _one_line(message: str) -> str:
    """The engine's reason in one line: regex errors come as a drawing plus an "error:" line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reasons = [line.removeprefix("error:").strip() for line in lines if line.startswith("error:")]
    return reasons[0] if reasons else lines[0]


class GrammarVocabulary:
    """The tokenizer as the grammar engine sees it: each id's bytes. Built once per tokenizer
    (a few hundred ms for 32k pieces) and shared by every constraint on it."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.size = tokenizer.vocab_size
        self.eos_id = tokenizer.eos_id
        pieces = tokenizer.piece_table()
        self.byte_ids = [0] * 256
        for i, piece in enumerate(pieces):
            if isinstance(piece, int):
                self.byte_ids[piece] = i
        self._inner_bytes = [self._piece_bytes(p) for p in pieces]
        self._newline_ids = tokenizer.encode("\n", bos=False)
        # Within a text, and as the first piece of one (leading space dropped).
        self.inner = self._llg_tokenizer(pieces, first=False)
        self.first = self._llg_tokenizer(pieces, first=True)

    def _piece_bytes(self, piece) -> bytes:
        if piece is None:
            return b""
        return bytes([piece]) if isinstance(piece, int) else piece.encode()

    def _llg_tokenizer(self, pieces: list, first: bool) -> "llguidance.LLTokenizer":
        unk = self.tokenizer.sp.unk_id()
        tokens, special = [], []
        for i, piece in enumerate(pieces):
            data = b"" if i == unk else self._piece_bytes(piece)
            if first and isinstance(piece, str) and data.startswith(b" "):
                data = data[1:]
            if not data:  # control tokens, <unk>, and a lone space that decodes to nothing
                special.append(i)
            tokens.append(data)
        description = _Description(self.tokenizer, tokens, special,
                                   lambda data: self.encode(data, first=first))
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(description))

    def first_bytes(self, token: int) -> bytes:
        """What `token` decodes to as the first token of a text."""
        data = self._inner_bytes[token]
        is_text = isinstance(self.tokenizer.piece_table()[token], str)
        return data[1:] if is_text and data.startswith(b" ") else data

    def encode(self, data: bytes, first: bool = False) -> list[int]:
        """Ids that decode to exactly `data`, as SentencePiece splits it: at the start of a
        text (`first`), or within one (after a newline, so no word mark is added); else its
        bytes. The engine tokenizes forced text with this."""
        as_bytes = [self.byte_ids[b] for b in data]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return as_bytes
        if first:
            ids = self.tokenizer.encode(text, bos=False)
            joined = self.first_bytes(ids[0]) if ids else b""
            joined += b"".join(self._inner_bytes[i] for i in ids[1:])
            return ids if joined == data else as_bytes
        ids = self.tokenizer.encode("\n" + text, bos=False)
        head = len(self._newline_ids)
        ids, start = ids[head:], ids[:head]
        joined = b"".join(self._inner_bytes[i] for i in ids)
        return ids if start == self._newline_ids and joined == data else as_bytes


class _Description:
    """The duck-typed tokenizer that `llguidance.TokenizerWrapper` reads."""

    def __init__(self, tokenizer: Tokenizer, tokens: list[bytes], special: list[int], encode):
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = tokenizer.bos_id
        self.tokens = tokens
        self.special_token_ids = special
        self._encode = encode

    def __call__(self, data: bytes) -> list[int]:
        return self._encode(data)


class Constraint:
    """One generation's grammar state: which tokens may come next, and the tokens taken.

    Per step the generation loop calls `mask(width)` (the host work, done while the model's
    forward runs), applies it to the logits before sampling, then `accept(token)`.
    """

    def __init__(self, spec: ConstraintSpec, vocab: GrammarVocabulary):
        self.spec = spec
        self.vocab = vocab
        self._first = self._matcher(vocab.first)
        self._inner = self._matcher(vocab.inner)
        self._started = False
        self._bitmask = allocate_token_bitmask(1, vocab.size)

    def _matcher(self, tokenizer) -> "llguidance.LLMatcher":
        matcher = llguidance.LLMatcher(tokenizer, self.spec.grammar, log_level=0)
        if matcher.is_error():
            raise SlmError(f"Invalid constraint: {_one_line(matcher.get_error())}")
        return matcher

    def allowed(self) -> np.ndarray:
        """Boolean [vocab size]: the tokens the grammar allows next (EOS only if complete)."""
        fill_next_token_bitmask(self._inner if self._started else self._first, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self.vocab.size].view(np.bool_)

    def mask(self, width: int) -> mx.array:
        """Boolean [1, width] for logits of `width` (ids past the vocabulary are never allowed)."""
        allowed = self.allowed()
        if width > allowed.size:
            allowed = np.concatenate([allowed, np.zeros(width - allowed.size, np.bool_)])
        return mx.array(allowed[None, :width])

    def accept(self, token: int) -> None:
        """Advance the grammar past `token`, which the last mask allowed."""
        if self._started:
            ok = self._inner.consume_token(token)
        else:
            self._started = True
            ok = self._first.consume_token(token)
            if token == self.vocab.eos_id:
                ok = ok and self._inner.consume_token(token)
            else:
                ids = [self.vocab.byte_ids[b] for b in self.vocab.first_bytes(token)]
                ok = ok and self._inner.consume_tokens(ids)
        if not ok:
            raise RuntimeError(f"token {token} broke the grammar: {self._inner.get_error()}")

    def is_done(self) -> bool:
        """Nothing but the end may follow: the output is complete."""
        return self._started and self._inner.is_stopped()

    def eos_allowed(self) -> bool:
        """The text so far is complete (it may also go on)."""
        return (self._inner if self._started else self._first).is_accepting()

    def matches(self, text: str) -> bool:
        """Whether `text` as a whole satisfies the constraint (independent of any tokens)."""
        matcher = self._matcher(self.vocab.inner)
        ids = [self.vocab.byte_ids[b] for b in text.encode()]
        return matcher.consume_tokens(ids) and matcher.is_accepting()
