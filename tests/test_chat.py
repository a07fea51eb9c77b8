"""The chat session: cache reuse, stops, interrupts, context trimming; the REPL and CLI."""

import pytest
from click.testing import CliRunner

from mlx_slm.apps.chat import ChatSession, repl
from mlx_slm.cache import cache_offset
from mlx_slm.chooser import TokenChooser
from mlx_slm.commands.cli import main
from mlx_slm.errors import SlmError
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load
from mlx_slm.sample import SamplingOptions
from tests.instruct_fixtures import make_model_dir, scripted_sampler

EOS = 2
MESSAGES = ["Hello there", "What is the capital of Ohio?", "Thanks, and of Utah?"]


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("chat") / "tiny-Instruct", instruct=True)


@pytest.fixture(scope="module")
def loaded(instruct_dir):
    return load(instruct_dir)


def fresh_run(session, max_tokens, sampling=None):
    """The last answer recomputed greedily with a fresh cache from the whole conversation
    up to it, as kept by the session (after any dropped turns)."""
    model, tokenizer = session.model, session.tokenizer
    ids = session.ids(session.turns[:-1], open_answer=True)
    chooser = TokenChooser(sampling, ids) if sampling else None
    tokens = generate_tokens(model, ids, max_tokens=max_tokens, chooser=chooser,
                             stop_ids=(tokenizer.eos_id,))
    return list(tokens), len(ids)


def test_cache_reuse_gives_the_tokens_of_a_fresh_run(loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_tokens=10, sampling=SamplingOptions())
    for i, text in enumerate(MESSAGES):
        result = session.send(text)
        expected, prompt_length = fresh_run(session, 10, SamplingOptions())
        assert result.tokens == expected
        if i:
            assert result.prompt_tokens < prompt_length / 2  # only the new tokens ran
        # The cache holds a prefix of the conversation so far, never anything else.
        history = session.ids()
        assert session.cached_ids == history[: len(session.cached_ids)]
        assert cache_offset(session.cache) == len(session.cached_ids)
    assert [t.role for t in session.turns] == ["user", "assistant"] * 3


def test_an_answer_ended_by_eos_has_its_eos_fed_with_the_next_turn(loaded):
    model, tokenizer = loaded
    # Call 3 returns EOS: the answer is three tokens, closed by id 2.
    session = ChatSession(model, tokenizer, max_tokens=8, sampler=scripted_sampler({3: EOS}))
    first = session.send(MESSAGES[0])
    assert first.finish_reason == "eos" and len(first.tokens) == 3
    assert session.ids()[-4:] == [*first.tokens, EOS]
    assert session.send(MESSAGES[1]).tokens == fresh_run(session, 8)[0]


def test_an_answer_cut_at_a_turn_header_keeps_only_the_text_before_it(loaded):
    model, tokenizer = loaded
    header = tokenizer.encode("\n<|user|>", bos=False)[1:]  # as generated after some text
    script = {i + 2: token for i, token in enumerate(header)}
    session = ChatSession(model, tokenizer, max_tokens=20, sampler=scripted_sampler(script))
    result = session.send(MESSAGES[0])
    assert result.finish_reason == "stop" and result.text.endswith("\n")
    answer = session.turns[-1]
    assert answer.ids == result.tokens[:3] and answer.ids[-1] == 13  # up to the newline
    assert answer.content == tokenizer.decode(answer.ids) == result.text
    assert session.send(MESSAGES[1]).tokens == fresh_run(session, 20)[0]


def test_ctrl_c_keeps_the_partial_answer_closed_and_the_chat_goes_on(loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_tokens=10,
                          sampler=scripted_sampler({4: KeyboardInterrupt()}))
    pieces = []
    result = session.send(MESSAGES[0], on_text=pieces.append)
    assert result.finish_reason == "interrupted" and len(result.tokens) == 3
    assert session.turns[-1].ids == result.tokens
    assert session.ids()[-4:] == [*result.tokens, EOS]
    assert session.send(MESSAGES[1]).tokens == fresh_run(session, 10)[0]


def test_ctrl_c_before_any_token_forgets_the_question(loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_tokens=5,
                          sampler=scripted_sampler({0: KeyboardInterrupt()}))
    session.send(MESSAGES[0])
    assert session.turns == [] and session.last.finish_reason == "interrupted"
    assert session.send(MESSAGES[1]).tokens == fresh_run(session, 5)[0]
    assert len(session.turns) == 2


def test_the_oldest_exchanges_are_dropped_near_the_context_limit(tmp_path):
    model, tokenizer = load(make_model_dir(tmp_path / "short", instruct=True,
                                           max_context_length=90))
    notes = []
    session = ChatSession(model, tokenizer, max_tokens=12, notify=notes.append)
    for i in range(6):
        result = session.send(f"Question number {i} about states.")
        assert len(session.ids()) <= 90
        # Whether turns were dropped or not, a fresh run on the kept turns agrees.
        assert result.tokens == fresh_run(session, 12)[0]
    assert "[dropped the 1 oldest exchange(s) to fit the 90-token context]" in notes
    assert session.turns[0].content == "Question number 4 about states."


def test_a_message_longer_than_the_context_is_refused(tmp_path):
    model, tokenizer = load(make_model_dir(tmp_path / "short", instruct=True,
                                           max_context_length=40))
    session = ChatSession(model, tokenizer, max_tokens=4)
    with pytest.raises(SlmError, match=r"makes a \d+-token prompt but the context is 40 tokens"):
        session.send("word " * 60)
    assert session.turns == []
    notes = []
    session.notify = notes.append
    session.send("a b c d e f g h i j k l")  # fits, but leaves less room than max_tokens
    assert notes and "answer capped at" in notes[0]


def test_system_message_and_reset_reuse_what_they_can(loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_tokens=4)
    session.send(MESSAGES[0])
    session.set_system("You are terse.")
    result = session.send(MESSAGES[1])
    expected, length = fresh_run(session, 4)
    assert result.tokens == expected and result.prompt_tokens > length - 10  # re-read
    session.reset()
    assert session.turns == [] and session.system == "You are terse."
    result = session.send(MESSAGES[2])
    expected, length = fresh_run(session, 4)
    assert result.tokens == expected and result.prompt_tokens < length  # system prefix reused


def test_repl_commands_and_exits(loaded):
    import io

    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, max_tokens=3)
    lines = iter(["", "/help", "hi", "/stats", "/bogus", "/system Be kind.", "/system",
                  "/reset", "/stats"])

    def read(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise KeyboardInterrupt from None  # Ctrl-C at the prompt leaves

    out, err = io.StringIO(), io.StringIO()
    assert repl(session, read=read, out=out, err=err) == 130  # Ctrl-C at the prompt
    log = err.getvalue()
    assert "/reset" in log and "Unknown command /bogus; /help lists the commands." in log
    assert "[system message set: Be kind.]" in log and "[system message removed]" in log
    assert "[conversation cleared]" in log
    assert log.count("context: ") == 2 and "last answer: prompt" in log
    assert session.turns == [] and session.system is None
    assert out.getvalue().endswith("\n")


def test_chat_cli_over_stdin(instruct_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["chat", "-m", str(instruct_dir), "-n", "4"],
                           input="Hello\n/stats\nHow are you?\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert "chatting with" in result.stderr
    assert "context: " in result.stderr and "1 exchange(s)" in result.stderr
    model, tokenizer = load(instruct_dir)
    session = ChatSession(model, tokenizer, max_tokens=4,
                          sampling=SamplingOptions())
    answers = [session.send(text).text for text in ("Hello", "How are you?")]
    assert result.stdout == "".join(f"{a}\n" for a in answers)


def test_piped_chat_goes_on_after_a_failed_message_and_exits_1(instruct_dir):
    result = CliRunner().invoke(main, ["chat", "-m", str(instruct_dir), "-n", "2"],
                                input=b"Hello\nbad \xff byte\nAgain\n")
    assert result.exit_code == 1, result.output
    assert result.stderr.count("Error: The text is not valid UTF-8") == 1
    assert len(result.stdout.splitlines()) == 2  # both good messages were answered
    ok = CliRunner().invoke(main, ["chat", "-m", str(instruct_dir), "-n", "2"],
                            input="Hello\n/exit\n")
    assert ok.exit_code == 0, ok.output


def test_repl_exit_codes():
    import io

    def reader(*lines, end):
        feed = iter(lines)

        def read(prompt):
            line = next(feed, None)
            if line is None:
                raise end
            return line
        return read

    session = ChatSession.__new__(ChatSession)  # no message is sent
    quiet = {"out": io.StringIO(), "err": io.StringIO()}
    assert repl(session, read=reader("/exit", end=EOFError()), **quiet) == 0
    assert repl(session, read=reader(end=EOFError()), **quiet) == 0  # Ctrl-D
    assert repl(session, read=reader(end=KeyboardInterrupt()), **quiet) == 130


def test_chat_cli_ctrl_c_stops_the_answer_only(instruct_dir, monkeypatch):
    import mlx_slm.sample

    sampler = scripted_sampler({3: KeyboardInterrupt()})
    monkeypatch.setattr(mlx_slm.sample, "make_sampler", lambda *args: sampler)
    result = CliRunner().invoke(main, ["chat", "-m", str(instruct_dir), "-n", "5"],
                                input="Hello\nAgain\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("[interrupted]") == 1
    assert len(sampler.calls) > 4  # the second message was answered after the interrupt


def test_chat_with_a_base_model_says_it_is_not_tuned(tmp_path):
    base = make_model_dir(tmp_path / "tiny-base")
    result = CliRunner().invoke(main, ["chat", "-m", str(base), "-n", "2"], input="Hi\n")
    assert result.exit_code == 0 and "is a base model, not tuned for chat" in result.stderr


def test_chat_cli_reports_a_missing_model(tmp_path):
    result = CliRunner().invoke(main, ["chat", "-m", str(tmp_path / "nope")], input="")
    assert result.exit_code == 1
    assert "is neither a model directory nor a Hub repo id" in result.stderr


class Terminal:
    """The controlling side of a pseudo-terminal, read up to expected markers."""

    def __init__(self, fd: int):
        self.fd = fd
        self.seen = b""
        self.position = 0

    def expect(self, marker: bytes, timeout: float = 60.0) -> bytes:
        """What the program wrote up to `marker`, which must come within `timeout` s."""
        import os
        import select
        import time

        deadline = time.monotonic() + timeout
        while (found := self.seen.find(marker, self.position)) < 0:
            ready, _, _ = select.select([self.fd], [], [], max(0, deadline - time.monotonic()))
            try:
                chunk = os.read(self.fd, 4096) if ready else b""
            except OSError:  # the program closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"no {marker!r} in {self.seen[self.position:][-300:]!r}")
            self.seen += chunk
        text = self.seen[self.position : found]
        self.position = found + len(marker)
        return text

    def write(self, data: bytes) -> None:
        import os

        os.write(self.fd, data)


def test_chat_in_a_real_terminal(instruct_dir):
    import os
    import signal
    import subprocess
    import sys

    # subprocess, not pty.fork: forking this process (MLX threads running) can deadlock.
    fd, child_end = os.openpty()
    chat = subprocess.Popen(
        [sys.executable, "-m", "mlx_slm", "chat", "-m", str(instruct_dir), "-n", "1500"],
        stdin=child_end, stdout=child_end, stderr=child_end, start_new_session=True,
    )
    os.close(child_end)
    terminal = Terminal(fd)
    try:
        terminal.expect(b"> ")
        terminal.write(b"Tell me a long story.\r")
        terminal.expect(b"story.\r\n")  # the terminal's echo
        terminal.expect(b" ")  # the answer has begun streaming
        chat.send_signal(signal.SIGINT)  # what Ctrl-C sends: stops the answer, not the chat
        terminal.expect(b"[interrupted]")
        terminal.expect(b"> ")
        terminal.write(b"/stats\r")
        stats = terminal.expect(b"> ")
        assert b"context: " in stats and b"1 exchange(s)" in stats
        terminal.write(b"\x04")  # Ctrl-D at the prompt leaves
        assert chat.wait(timeout=60) == 0
    finally:
        os.close(fd)
        if chat.poll() is None:
            chat.kill()
            chat.wait()


@pytest.mark.parametrize("flags, text", [
    ([], "Sacramento.\n"),  # an Instruct model: chat format, stopped at the next turn header
    (["--no-chat"], "Sacramento.\n<|user|>"),  # a completion: headers are just text
])
def test_generate_in_chat_format_stops_at_a_turn_header(instruct_dir, monkeypatch, flags, text):
    import json

    import mlx_slm.sample

    _, tokenizer = load(instruct_dir)
    script = dict(enumerate(tokenizer.encode("Sacramento.\n<|user|>", bos=False)))
    monkeypatch.setattr(mlx_slm.sample, "make_sampler", lambda *a: scripted_sampler(script))
    result = CliRunner().invoke(main, ["generate", "-m", str(instruct_dir), "-n", str(len(script)),
                                       "--json", *flags])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"] == text


def test_chat_stats_show_a_small_cache_in_mb_and_no_rate_for_one_token():
    from mlx_slm.apps.chat import format_chat_stats

    text = format_chat_stats({
        "context_tokens": 30, "context_limit": 2048, "exchanges": 1, "cache_gb": 0.0004,
        "last_prompt_tokens": 29, "last_prompt_tps": 100.0, "last_generation_tokens": 1,
        "last_generation_tps": 0.0, "last_ttft_s": 0.3, "peak_memory_gb": 0.1,
        "peak_rss_gb": 0.2,
    })
    assert "KV cache 0.4 MB" in text and "0.000 GB" not in text
    assert "prompt 29 tokens, 100.0 tok/s, 1 token, TTFT 0.30 s" in text


def test_sigterm_ends_the_answer_then_the_chat_with_143(instruct_dir):
    import signal
    import subprocess
    import sys

    chat = subprocess.Popen(
        [sys.executable, "-m", "mlx_slm", "chat", "-m", str(instruct_dir), "-n", "1500"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        chat.stdin.write(b"Tell me a long story.\nAnd another one.\n")
        chat.stdin.flush()  # stdin stays open: only SIGTERM ends the chat
        chat.stdout.read(1)  # the answer has begun streaming
        chat.send_signal(signal.SIGTERM)
        out, err = chat.communicate(timeout=60)
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.wait()
    err = err.decode()
    assert chat.returncode == 143 and "Traceback" not in err
    assert err.strip().endswith("[interrupted]")  # the second message was never answered
    assert out.endswith(b"\n")


def test_repl_exits_143_after_sigterm_at_the_prompt():
    import io

    from mlx_slm.apps.signals import Terminated

    def read(prompt):
        raise Terminated()

    session = ChatSession.__new__(ChatSession)
    quiet = {"out": io.StringIO(), "err": io.StringIO()}
    assert repl(session, read=read, terminated=lambda: True, **quiet) == 143
