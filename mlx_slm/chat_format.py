"""The Instruct prompt format, built at the token level.

OpenELM-Instruct was tuned with the alignment-handbook recipe, whose template renders
    <s><|system|>\\n{system}</s>\\n<|user|>\\n{question}</s>\\n<|assistant|>\\n
(inferred from the tuning recipe; Apple published none). An empty system turn is inserted
when none is given, as the recipe does. With plain SentencePiece the text "</s>" does not
encode to id 2, so we insert the id between separately encoded segments; each segment gets
SentencePiece's leading "▁", as the HF tokenizer used in tuning gave it. The model ends its
answer with EOS (id 2).
"""

from dataclasses import dataclass

from mlx_slm.errors import InvalidPrompt, PromptTooLong

METADATA_KEY = "mlx_slm"
ROLES = ("system", "user", "assistant")
# The turn headers are plain text to the tokenizer, so a model that misses its EOS may write
# the next header itself; chat use stops there too.
TURN_HEADERS = tuple(f"<|{role}|>" for role in ROLES)


@dataclass
class Turn:
    """One turn; `ids` keeps the tokens a model produced, which re-encoding might not."""

    role: str
    content: str
    ids: list[int] | None = None


@dataclass(frozen=True)
class PromptFormat:
    """Whether to use the Instruct format (None: as the model says, or on when a system
    message is given, since only that format carries one) and with which system message."""

    chat: bool | None = None
    system: str | None = None

    def prepare(self, tokenizer, model_args, prompt: "str | list[int] | list[Turn]", *,
                max_tokens: int | None = None, stop: tuple[str, ...] = (),
                name: str | None = None, turn_stops: bool = True) -> "PreparedPrompt":
        """The one way a prompt becomes ids: text in the format the model suits (or the one
        forced), a conversation (a list of Turns) in the chat format, or ids as given; fitted
        to the model's context (`max_tokens` None: all the room left); the stop strings are
        `stop` plus, for the chat format, the turn headers (unless `turn_stops` is off)."""
        config = model_args.extra
        if isinstance(prompt, str):
            chat = self.uses_chat(config, name)
            ids = prompt_ids(tokenizer, prompt, chat, self.system)
        elif prompt and isinstance(prompt[0], Turn):
            chat, ids = True, conversation_ids(tokenizer, list(prompt), self.system)
        else:
            chat, ids = False, [int(i) for i in prompt]
            if not all(0 <= i < tokenizer.vocab_size for i in ids):
                raise InvalidPrompt(
                    f"Token ids must be between 0 and {tokenizer.vocab_size - 1}.")
        if not ids:
            raise InvalidPrompt("The prompt holds no tokens; give some text or ids.")
        context = model_args.max_context_length
        if len(ids) >= context:
            raise PromptTooLong(f"The prompt has {len(ids)} tokens but the model's context is "
                                f"{context}; shorten the prompt.")
        room = context - len(ids)
        stops = tuple(stop) + (TURN_HEADERS if chat and turn_stops else ())
        return PreparedPrompt(ids, chat, stops, room if max_tokens is None else
                              min(max_tokens, room), max_tokens)

    def uses_chat(self, config: dict, name: str | None = None) -> bool:
        """`name`: the model's repo or directory name, read when its metadata says nothing."""
        if self.chat is not None:
            return self.chat
        return is_instruct(config, name) or self.system is not None

    def note(self, config: dict, name: str | None = None) -> str | None:
        """One line saying why the format was chosen, when it was not by the model's
        metadata or the user's --chat/--no-chat; None otherwise."""
        if self.chat is not None:
            return None
        meta = config.get(METADATA_KEY) or {}
        if "instruct" not in meta and not meta.get("source") and named_instruct(name or ""):
            return (f"[{name}: no mlx-slm metadata, but the name says Instruct: chat format "
                    "on (--no-chat for a plain completion)]")
        if self.system is not None and not is_instruct(config, name):
            return "[--system given: chat format on, although this is a base model]"
        return None


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt ready to generate from: its ids, whether it is in the chat format, the stop
    strings that end its answer, and how many tokens may follow in the context."""

    ids: list[int]
    chat: bool
    stop_strings: tuple[str, ...]
    max_tokens: int
    requested: int | None = None  # the max_tokens asked for, before the context capped it

    @property
    def capped(self) -> bool:
        return self.requested is not None and self.max_tokens < self.requested


def is_instruct(config: dict, name: str | None = None) -> bool:
    """Whether a model is an Instruct model: the converter's flag, else the name it was
    converted from, else `name` (a repo id or directory name), as `named_instruct` reads."""
    meta = config.get(METADATA_KEY) or {}
    if "instruct" in meta:
        return bool(meta["instruct"])
    return named_instruct(str(meta.get("source") or name or ""))


def named_instruct(name: str) -> bool:
    """The one rule for guessing from a name, shared with the converter: "instruct" is one of
    the dash-separated words of its last part (apple/OpenELM-270M-Instruct,
    mlx-community/OpenELM-3B-Instruct-4bit, ./OpenELM-1_1B-Instruct)."""
    return "instruct" in name.rstrip("/").split("/")[-1].lower().split("-")


def header_ids(tokenizer, role: str, first: bool = False) -> list[int]:
    """The ids that open a turn: a newline after the previous EOS, the role, a newline."""
    newline = "" if first else "\n"
    return tokenizer.encode(f"{newline}<|{role}|>\n", bos=False)


def turn_ids(tokenizer, turn: Turn, first: bool) -> list[int]:
    """One turn's ids: its header and content, closed by EOS (id 2)."""
    if turn.ids is not None:
        # A newline is never merged with its neighbours, so header + content ids equal the
        # encoding of the whole segment for any canonically tokenized content.
        return header_ids(tokenizer, turn.role, first) + list(turn.ids) + [tokenizer.eos_id]
    newline = "" if first else "\n"
    return tokenizer.encode(f"{newline}<|{turn.role}|>\n{turn.content}", bos=False) + [
        tokenizer.eos_id
    ]


def assistant_header_ids(tokenizer) -> list[int]:
    """The ids that open the assistant's turn; the model continues from here."""
    return header_ids(tokenizer, "assistant")


def conversation_ids(tokenizer, turns: list[Turn], system: str | None = None,
                     add_generation_prompt: bool = True) -> list[int]:
    """BOS, the system turn (empty when none is given), the turns, the assistant header."""
    ids = [tokenizer.bos_id]
    all_turns = [Turn("system", system or ""), *turns]
    for i, turn in enumerate(all_turns):
        if turn.role not in ROLES or (i > 0 and turn.role == "system"):
            raise ValueError(f"unexpected role {turn.role!r} (the system message is `system`)")
        ids += turn_ids(tokenizer, turn, first=i == 0)
    return ids + assistant_header_ids(tokenizer) if add_generation_prompt else ids


def prompt_ids(tokenizer, prompt: str, chat: bool, system: str | None = None) -> list[int]:
    """A single prompt as ids: the chat format for Instruct use, else BOS + the text."""
    if chat:
        return conversation_ids(tokenizer, [Turn("user", prompt)], system)
    return tokenizer.encode(prompt)
