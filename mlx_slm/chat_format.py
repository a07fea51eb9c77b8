"""The Instruct prompt format, built at the token level.

OpenELM-Instruct was tuned with the alignment-handbook recipe, whose template renders
    <s><|system|>\\n{system}</s>\\n<|user|>\\n{question}</s>\\n<|assistant|>\\n
(inferred from the tuning recipe; Apple published none). With plain SentencePiece the text
"</s>" does not encode to id 2, so we insert the id between separately encoded segments;
each segment gets SentencePiece's leading "▁", as the HF tokenizer used in tuning gave it.
"""

from dataclasses import dataclass

METADATA_KEY = "mlx_slm"
ROLES = ("system", "user", "assistant")


@dataclass
class Turn:
    role: str
    content: str


def is_instruct(config: dict) -> bool:
    """Whether a converted model is an Instruct model, from the converter's metadata."""
    meta = config.get(METADATA_KEY) or {}
    if "instruct" in meta:
        return bool(meta["instruct"])
    return str(meta.get("source", "")).endswith("-Instruct")


def turn_ids(tokenizer, turn: Turn, first: bool) -> list[int]:
    """One turn's ids: its header and content, closed by EOS (id 2)."""
    newline = "" if first else "\n"
    return tokenizer.encode(f"{newline}<|{turn.role}|>\n{turn.content}", bos=False) + [
        tokenizer.eos_id
    ]


def assistant_header_ids(tokenizer) -> list[int]:
    """The ids that open the assistant's turn; the model continues from here."""
    return tokenizer.encode("\n<|assistant|>\n", bos=False)


def conversation_ids(tokenizer, turns: list[Turn], system: str | None = None) -> list[int]:
    """BOS, the system turn (empty when none is given), the turns, the assistant header."""
    ids = [tokenizer.bos_id]
    all_turns = [Turn("system", system or ""), *turns]
    for i, turn in enumerate(all_turns):
        if turn.role not in ROLES:
            raise ValueError(f"unknown role {turn.role!r}")
        ids += turn_ids(tokenizer, turn, first=i == 0)
    return ids + assistant_header_ids(tokenizer)


def prompt_ids(tokenizer, prompt: str, chat: bool, system: str | None = None) -> list[int]:
    """A single prompt as ids: the chat format for Instruct use, else BOS + the text."""
    if chat:
        return conversation_ids(tokenizer, [Turn("user", prompt)], system)
    return tokenizer.encode(prompt)
