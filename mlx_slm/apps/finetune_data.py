"""Fine-tuning data: JSONL files read, checked and tokenized before any training starts.

A data path is a directory with train.jsonl and optionally valid.jsonl and test.jsonl, or
one JSONL file (training only). Each line is one of mlx-lm's formats:
  {"text": ...}                          every token carries loss;
  {"prompt": ..., "completion": ...}     the Instruct format for an Instruct model;
  {"messages": [{"role", "content"}...]} always rendered in OpenELM's Instruct format.
With `mask_prompt`, only completion (assistant) tokens and their EOS carry loss. Every
problem is an SlmError naming the file and line, raised before anything is written.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlx_slm.chat_format import ROLES, Turn, header_ids, turn_ids
from mlx_slm.errors import SlmError
from mlx_slm.training import Example

SPLITS = ("train", "valid", "test")
FORMATS = {"text": ("text",), "completion": ("prompt", "completion"), "chat": ("messages",)}
SHOW_CUT = 5  # over-long lines named in the message


@dataclass(frozen=True)
class DataOptions:
    """Where the data is and how it becomes tokens. `chat` renders prompt/completion data in
    the Instruct format (None: when the model is an Instruct model); `truncate` cuts
    sequences longer than `max_seq_length` tokens instead of refusing them."""

    path: str
    max_seq_length: int = 2048
    mask_prompt: bool = False
    chat: bool | None = None
    truncate: bool = False


@dataclass
class Dataset:
    """Tokenized splits; `cut` lists "file:line" of the sequences that were truncated."""

    splits: dict[str, list[Example]]
    files: dict[str, Path]
    cut: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over the data files, to tell a resumed run that its data changed."""
        digest = hashlib.sha256()
        for split in SPLITS:
            if split in self.files:
                digest.update(split.encode() + self.files[split].read_bytes())
        return digest.hexdigest()


def data_files(path: str | Path) -> dict[str, Path]:
    """The split files of a data path (a directory or one file)."""
    path = Path(path).expanduser()
    if path.is_file():
        return {"train": path}
    if not path.is_dir():
        raise SlmError(f"Data path {path} does not exist; give a directory with train.jsonl "
                       "(and valid.jsonl) or one JSONL file.")
    files = {s: path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").is_file()}
    if "train" not in files:
        raise SlmError(f"{path} has no train.jsonl; a data directory holds train.jsonl, "
                       "valid.jsonl and optionally test.jsonl.")
    return files


def read_records(path: Path) -> tuple[str, list[tuple[int, dict]]]:
    """The file's format and (line number, object) for each non-blank line; all lines
    must have the same format."""
    from mlx_slm.store.files import read_utf8

    records, first = [], None
    for number, line in enumerate(read_utf8(path, "data files are UTF-8 JSONL").splitlines(),
                                  start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise SlmError(f"{where}: not JSON ({err.msg} at column {err.colno}).") from None
        kind = record_format(record, where)
        if first is None:
            first = (kind, number)
        elif kind != first[0]:
            raise SlmError(f"{where}: a {kind!r} line in a file whose line {first[1]} is "
                           f"{first[0]!r}; use one format per file.")
        records.append((number, record))
    if not records:
        raise SlmError(f"{path} holds no examples.")
    return first[0], records


def record_format(record, where: str) -> str:
    """The format of one line, or an SlmError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise SlmError(f"{where}: each line must be a JSON object, got {type(record).__name__}.")
    kinds = [kind for kind, keys in FORMATS.items() if all(k in record for k in keys)]
    if not kinds:
        raise SlmError(f"{where}: unknown format (keys {', '.join(sorted(record)) or 'none'}); "
                       'expected {"text"}, {"prompt", "completion"} or {"messages"}.')
    kind = kinds[0]
    fields = [record[k] for k in FORMATS[kind]] if kind != "chat" else []
    if kind == "chat":
        _check_messages(record["messages"], where)
    elif any(not isinstance(v, str) for v in fields):
        raise SlmError(f"{where}: {' and '.join(FORMATS[kind])} must be strings.")
    else:
        for key, value in zip(FORMATS[kind], fields):
            if not value.strip():
                raise SlmError(f"{where}: empty {key}.")
    return kind


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise SlmError(f"{where}: messages must be a non-empty list.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise SlmError(f"{where}: message {i + 1} needs a role ({', '.join(ROLES)}).")
        if message["role"] == "system" and i > 0:
            raise SlmError(f"{where}: only the first message may be the system message.")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise SlmError(f"{where}: message {i + 1} ({message['role']}) has empty content.")
    if not any(m["role"] == "assistant" for m in messages):
        raise SlmError(f"{where}: no assistant message, so nothing to learn.")


def chat_example(tokenizer, turns: list[Turn], system: str | None,
                 mask_prompt: bool) -> Example:
    """A conversation in the Instruct format, as chat_format.conversation_ids renders it
    (without the trailing generation prompt). With `mask_prompt` only the assistant turns'
    content and EOS carry loss; their headers are the prompt the model is given."""
    ids, mask = [tokenizer.bos_id], [False]
    for i, turn in enumerate([Turn("system", system or ""), *turns]):
        part = turn_ids(tokenizer, turn, first=i == 0)
        if mask_prompt:
            header = len(header_ids(tokenizer, turn.role, first=i == 0))
            answer = turn.role == "assistant"
            mask += [False] * header + [answer] * (len(part) - header)
        else:
            mask += [True] * len(part)
        ids += part
    return Example(ids, mask)


def encode_record(tokenizer, kind: str, record: dict, chat: bool,
                  mask_prompt: bool) -> Example:
    """One checked line as tokens with its loss mask."""
    if kind == "chat":
        messages = record["messages"]
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = [Turn(m["role"], m["content"]) for m in messages if m["role"] != "system"]
        return chat_example(tokenizer, turns, system, mask_prompt)
    if kind == "completion" and chat:
        turns = [Turn("user", record["prompt"]), Turn("assistant", record["completion"])]
        return chat_example(tokenizer, turns, None, mask_prompt)
    if kind == "completion":
        # The boundary is the prompt's own length, as mlx-lm takes it: SentencePiece
        # seldom merges across it.
        prompt = len(tokenizer.encode(record["prompt"]))
        ids = tokenizer.encode(record["prompt"] + record["completion"]) + [tokenizer.eos_id]
        start = prompt if mask_prompt else 1
        return Example(ids, [False] * start + [True] * (len(ids) - start))
    ids = tokenizer.encode(record["text"]) + [tokenizer.eos_id]
    return Example(ids, [False] + [True] * (len(ids) - 1))


def load_dataset(options: DataOptions, tokenizer, chat: bool) -> Dataset:
    """Read, check and tokenize every split; refuse (or cut, with `truncate`) sequences of
    more than max_seq_length tokens, naming them."""
    files = data_files(options.path)
    splits, long = {}, []
    limit = options.max_seq_length
    for split, path in files.items():
        kind, records = read_records(path)
        if options.mask_prompt and kind == "text":
            raise SlmError(f"{path}: --mask-prompt needs prompt/completion or messages data, "
                           'but this file holds {"text"} lines.')
        examples = []
        for number, record in records:
            example = encode_record(tokenizer, kind, record, chat, options.mask_prompt)
            if len(example.ids) > limit + 1:  # +1: the last token is only a target
                long.append((f"{path.name}:{number}", len(example.ids) - 1))
                example = Example(example.ids[: limit + 1], example.loss_mask[: limit + 1])
            if not any(example.loss_mask):
                raise SlmError(f"{path}:{number}: no token carries loss after cutting to "
                               f"--max-seq-length {limit}.")
            examples.append(example)
        splits[split] = examples
    if long and not options.truncate:
        named = ", ".join(f"{where} ({n} tokens)" for where, n in long[:SHOW_CUT])
        more = f" and {len(long) - SHOW_CUT} more" if len(long) > SHOW_CUT else ""
        raise SlmError(f"{len(long)} sequence(s) exceed --max-seq-length {limit} and would be "
                       f"cut: {named}{more}; raise --max-seq-length, or pass --truncate to "
                       "cut them.")
    return Dataset(splits, files, [where for where, _ in long])
