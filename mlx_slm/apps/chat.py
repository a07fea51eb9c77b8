"""A multi-turn chat whose KV cache is kept across turns, and the terminal loop around it.

The cache always holds a prefix of the conversation's token ids (`conversation_ids` of the
history), so each turn runs only the tokens past that prefix: the previous answer's EOS if
it was never fed, the new user turn and the assistant header.
"""

import functools
import os
import sys
from collections.abc import Callable

from mlx_slm.cache import make_cache
from mlx_slm.chat_format import PreparedPrompt, PromptFormat, Turn, conversation_ids
from mlx_slm.chooser import GREEDY, TokenChooser
from mlx_slm.errors import PromptTooLong, SlmError
from mlx_slm.generation import DecodeStep, Generation, stream_text
from mlx_slm.sample import SamplingOptions


class ChatSession:
    """Turns, the KV cache and the ids it holds; `send` answers one user message."""

    def __init__(self, model, tokenizer, *, system: str | None = None, max_tokens: int = 256,
                 sampling: SamplingOptions = GREEDY, sampler=None,
                 notify: Callable[[str], None] | None = None, constraint=None, draft=None):
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.sampler = sampler  # a custom draw (see TokenChooser), or None
        self.key = None  # the random key where the last turn's draws left it
        self.notify = notify or (lambda note: None)
        self.context = model.args.max_context_length
        self.turns: list[Turn] = []
        self.cache = make_cache(model)
        self.step = DecodeStep(model)  # traced once, reused by every turn
        self.draft = draft  # a speculative.Draft, or None
        self.cached_ids: list[int] = []
        self.last: Generation | None = None
        # Every answer obeys `constraint` (a mlx_slm.constrain.ConstraintSpec), if given.
        self.constraint = constraint
        self.vocab = None
        if constraint is not None:
            from mlx_slm.constrain import GrammarVocabulary

            self.vocab = GrammarVocabulary(tokenizer)

    def ids(self, turns: list[Turn] | None = None, open_answer: bool = False) -> list[int]:
        """The conversation's ids: the history (or `turns`), optionally opening an answer."""
        turns = self.turns if turns is None else turns
        return conversation_ids(self.tokenizer, turns, self.system, open_answer)

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> Generation:
        """Answer `text`, streaming pieces to `on_text`; Ctrl-C ends the answer early."""
        turns, prepared = self._fit([*self.turns, Turn("user", text)])
        ids = prepared.ids
        keep = min(len(os.path.commonprefix([self.cached_ids, ids])), len(ids) - 1)
        self._rewind(keep)
        result = Generation()
        constraint = None
        if self.constraint is not None:
            from mlx_slm.constrain import Constraint

            constraint = Constraint(self.constraint, self.vocab)
        chooser = TokenChooser(self.sampling, ids, constraint, self.sampler)
        if self.key is not None:  # a seed's random stream goes on across turns
            chooser.key = self.key
        source = None
        if self.draft is not None:  # the draft keeps its own cache of the conversation
            source = functools.partial(self.draft.generate_tokens, context=ids[:keep])
        try:
            stream_text(
                self.model, self.tokenizer, ids[keep:], max_tokens=prepared.max_tokens,
                chooser=chooser,
                stop_strings=prepared.stop_strings, cache=self.cache, step=self.step,
                on_text=on_text, result=result, token_source=source,
            )
        except KeyboardInterrupt:
            result.finish_reason = "interrupted"
        self.last = result
        self.key = chooser.key
        answer = self._answer_ids(result)
        if result.finish_reason == "interrupted":
            # The cache may be mid-update; what it held before this turn is sound.
            self._rewind(keep)
            if not result.tokens:
                return result  # nothing was said: forget the question too
        else:
            fed = ids + result.tokens + [self.tokenizer.eos_id]
            self.cached_ids = fed[: min(c.offset for c in self.cache)]
        result.text = self.tokenizer.decode(answer)
        self.turns = [*turns, Turn("assistant", result.text, ids=answer)]
        return result

    def reset(self) -> None:
        """Forget the turns; the system message stays (and so does its cached prefix)."""
        self.turns = []

    def set_system(self, text: str | None) -> None:
        """A new system message; the turns are kept and re-read after it on the next turn."""
        self.system = text or None

    def stats(self) -> dict:
        """Tokens in context, the last answer's speed and the memory in use."""
        from mlx_slm.memory import GB, current_rss_bytes, memory_report

        report = {
            "context_tokens": len(self.ids()),
            "context_limit": self.context,
            "exchanges": sum(t.role == "user" for t in self.turns),
            "cache_gb": sum(c.nbytes for c in self.cache) / 1e9,
            **memory_report(),
        }
        rss = current_rss_bytes()
        if rss is not None:
            report["rss_gb"] = rss / GB
        if self.last is not None:
            report.update(
                last_prompt_tokens=self.last.prompt_tokens,
                last_generation_tokens=self.last.generation_tokens,
                last_prompt_tps=self.last.prompt_tps,
                last_generation_tps=self.last.generation_tps,
                last_ttft_s=self.last.prompt_s,
            )
            if self.draft is not None:
                report["draft"] = {"num_draft_tokens": self.draft.num_draft_tokens or "adaptive",
                                   **self.draft.stats.as_dict()}
        return report

    def _fit(self, turns: list[Turn]) -> tuple[list[Turn], PreparedPrompt]:
        """Drop the oldest exchanges until the prompt and an answer fit in the context,
        then prepare the prompt as every app does."""
        dropped = 0
        while len(turns) > 1 and len(self.ids(turns, True)) + self.max_tokens > self.context:
            turns = turns[2:]  # one user turn and its answer
            dropped += 1
        try:
            prepared = PromptFormat(chat=True, system=self.system).prepare(
                self.tokenizer, self.model.args, turns, max_tokens=self.max_tokens)
        except PromptTooLong:
            raise SlmError(
                f"This message makes a {len(self.ids(turns, True))}-token prompt but the "
                f"context is {self.context} tokens; send a shorter one (or a shorter /system "
                "message).") from None
        if dropped:
            self.notify(f"[dropped the {dropped} oldest exchange(s) to fit the "
                        f"{self.context}-token context]")
        if prepared.capped:
            self.notify(f"[answer capped at {prepared.max_tokens} tokens by the context]")
        return turns, prepared

    def _rewind(self, keep: int) -> None:
        """Make the cache hold exactly the first `keep` ids of `cached_ids`."""
        for layer in self.cache:
            layer.trim(layer.offset - keep)
        self.cached_ids = self.cached_ids[:keep]

    def _answer_ids(self, result: Generation) -> list[int]:
        """The generated ids that belong in the history: those before any stop string."""
        if result.finish_reason != "stop":
            return list(result.tokens)
        tokens = result.tokens
        for n in range(len(tokens), -1, -1):
            if result.text.startswith(self.tokenizer.decode(tokens[:n])):
                return list(tokens[:n])
        return []


HELP = """Commands:
  /reset          forget the conversation (the system message stays)
  /system TEXT    set the system message (/system alone removes it)
  /stats          tokens in context, the last answer's speed, memory
  /help           this list
  /exit           leave (so do Ctrl-D and Ctrl-C at the prompt)
Ctrl-C during an answer stops it; the chat goes on."""


def format_chat_stats(report: dict) -> str:
    """The /stats lines."""
    from mlx_slm.apps.generate import tokens_at
    from mlx_slm.sizes import human_bytes

    lines = [
        f"context: {report['context_tokens']} of {report['context_limit']} tokens, "
        f"{report['exchanges']} exchange(s), KV cache {human_bytes(report['cache_gb'] * 1e9)}",
    ]
    if "last_prompt_tokens" in report:
        prompt = tokens_at(report["last_prompt_tokens"], report["last_prompt_tps"] or None)
        answer = tokens_at(report["last_generation_tokens"],
                           report["last_generation_tps"] or None)
        lines.append(f"last answer: prompt {prompt}, {answer}, "
                     f"TTFT {report['last_ttft_s']:.2f} s")
    if "draft" in report:
        from mlx_slm.apps.drafting import format_draft_stats

        lines.append(format_draft_stats(report["draft"]))
    memory = (f"memory: peak MLX {report['peak_memory_gb']:.2f} GB, "
              f"peak RSS {report['peak_rss_gb']:.2f} GB")
    if "rss_gb" in report:
        memory += f", RSS now {report['rss_gb']:.2f} GB"
    return "\n".join([*lines, memory])


def repl(session: ChatSession, read: Callable[[str], str] = input, out=None, err=None,
         prompt: str = "> ", terminated: Callable[[], bool] = lambda: False) -> int:
    """Read messages and commands until /exit, Ctrl-D or Ctrl-C at the prompt; returns the
    exit code: 130 after Ctrl-C at the prompt, 143 after SIGTERM (`terminated()` says whether
    it came; it ends an answer as Ctrl-C does, then the chat), else 1 if a message failed,
    else 0."""
    out = out or sys.stdout
    err = err or sys.stderr
    failed = False

    def show(text: str) -> None:
        out.write(text)
        out.flush()

    while True:
        try:
            line = read(prompt)
        except (EOFError, KeyboardInterrupt) as stop:
            if prompt:
                out.write("\n")
            if terminated():
                return 143
            return 130 if isinstance(stop, KeyboardInterrupt) else int(failed)
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if not run_command(session, text, err):
                return int(failed)
            continue
        try:
            result = session.send(text, on_text=show)
        except SlmError as error:
            print(f"Error: {error}", file=err)
            failed = True  # the chat goes on; a script learns of it from the exit code
            continue
        out.write("\n")
        out.flush()
        if result.finish_reason == "interrupted":
            print("[interrupted]", file=err)
            if terminated():
                return 143


def run_command(session: ChatSession, text: str, err) -> bool:
    """Carry out one /command; False means leave the chat."""
    name, _, argument = text.partition(" ")
    argument = argument.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        print("[conversation cleared]", file=err)
    elif name == "/system":
        session.set_system(argument)
        print(f"[system message set: {argument}]" if argument else "[system message removed]",
              file=err)
    elif name == "/stats":
        print(format_chat_stats(session.stats()), file=err)
    elif name == "/help":
        print(HELP, file=err)
    else:
        print(f"Unknown command {name}; /help lists the commands.", file=err)
    return True
