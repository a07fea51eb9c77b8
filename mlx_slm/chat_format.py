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
    """Whether to use the Instruct format (None: as the model's metadata says) and with
    which system message."""

    chat: bool | None = None
    system: str | None = None

    def uses_chat(self, config: dict) -> bool:
        return is_instruct(config) if self.chat is None else self.chat


def is_instruct(config: dict) -> bool:
    """Whether a converted model is an Instruct model, from the converter's metadata."""
    meta = config.get(METADATA_KEY) or {}
    if "instruct" in meta:
        return bool(meta["instruct"])
    return str(meta.get("source", "")).endswith("-Instruct")


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
