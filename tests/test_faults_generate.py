"""Generation under faults: memory guard, Ctrl-C, a closed stdout, long runs."""

import json
import signal
import subprocess
import sys
import time

import mlx.core as mx
import pytest
from click.testing import CliRunner

import mlx_slm.apps.model_loading as model_loading
import mlx_slm.memory as memory
from mlx_slm.cache import make_cache
from mlx_slm.commands.cli import main
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model
from mlx_slm.sizes import human_bytes


def generate_cmd(model_dir, *args):
    return [sys.executable, "-m", "mlx_slm", "generate", "-m", str(model_dir), *args]


def test_memory_guard_refuses_with_figures_unless_forced(model_dir, monkeypatch):
    needed = model_loading.estimate_bytes(model_dir, json.loads(
        (model_dir / "config.json").read_text()))
    monkeypatch.setattr(memory, "available_bytes", lambda: needed // 2)
    result = CliRunner().invoke(main, ["generate", "-m", str(model_dir), "-n", "2"])
    assert result.exit_code == 1
    message = result.stderr.strip()
    assert message.startswith("Error: This model needs about ")
    assert human_bytes(needed) in message
    assert human_bytes(needed // 2) in message
    assert "quantized model" in message and "--force" in message
    forced = CliRunner().invoke(main, ["generate", "-m", str(model_dir), "-n", "2", "--force"])
    assert forced.exit_code == 0


def test_estimate_counts_weights_and_cache(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    cache = 2 * sum(config["num_kv_heads"]) * config["head_dim"] * 2048 * 4
    estimate = model_loading.estimate_bytes(model_dir, config)
    assert weights + cache < estimate <= (weights + cache) * 1.1 + 1


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_print_text_so_far_and_stats(model_dir, sig, code):
    # SIGTERM ends a generation as Ctrl-C does (text, newline, stats), exit 143.
    proc = subprocess.Popen(generate_cmd(model_dir, "-n", "5000", "--ignore-eos"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.read(1)  # generation has started
    time.sleep(0.3)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    err = err.decode()
    assert "Traceback" not in err
    stats = err.strip().splitlines()[-1]
    assert stats.startswith("[interrupted] prompt:") and "generation:" in stats
    generated = int(stats.split("generation: ")[1].split(" tokens")[0])
    assert 0 < generated < 2040
    assert len(first + out) > 1 and (first + out).endswith(b"\n")


def test_closed_stdout_ends_quietly(model_dir):
    proc = subprocess.Popen(generate_cmd(model_dir, "-n", "400", "--ignore-eos"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(5)
    proc.stdout.close()  # like `| head -c 5`
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "Traceback" not in err.decode() and "Exception ignored" not in err.decode()


@pytest.fixture(scope="module")
def one_layer_checkpoint(tmp_path_factory):
    """The smallest model with a 2048-token context: the long runs below stay quick."""
    from mlx_slm.synthetic import tiny_config, write_hub_checkpoint

    config = tiny_config(num_layers=1, model_dim=32, head_dim=16, query_heads=(2,),
                         kv_heads=(1,), ffn_multipliers=(1.0,), vocab_size=1000)
    return write_hub_checkpoint(tmp_path_factory.mktemp("one") / "model", config)


def test_full_context_generation_keeps_memory_flat(one_layer_checkpoint):
    """Over a whole 2048-token context memory grows only by the KV cache: in flight there
    is at most one step's transients, and nothing is left behind afterwards."""
    model, _ = load_model(one_layer_checkpoint)
    base = mx.get_active_memory()
    for run in range(2):
        cache = make_cache(model)
        extra = []
        for n, _ in enumerate(generate_tokens(model, [1, 450], cache=cache, max_tokens=2046)):
            if n % 300 == 299:
                extra.append(mx.get_active_memory() - base - sum(c.nbytes for c in cache))
        assert cache[0].offset == 2047
        assert max(extra) < 1024 * 1024, extra  # one step's logits and scores, not a leak
        left = mx.get_active_memory() - base - sum(c.nbytes for c in cache)
        assert left < 64 * 1024, (run, left)
        del cache


def test_interrupt_before_generation_exits_130_quietly(model_dir, monkeypatch):
    import mlx_slm.loader

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlx_slm.loader, "load", interrupted)
    result = CliRunner().invoke(main, ["generate", "-m", str(model_dir), "-n", "2"])
    assert result.exit_code == 130
    assert result.stderr.strip() == "Interrupted."


@pytest.mark.slow
def test_hundred_turn_chat_keeps_memory_flat(model_dir, tmp_path):
    """A long scripted chat trims its history at the context; memory stays at the cache's
    ceiling instead of growing turn by turn. (A 512-token context makes trimming, which
    re-reads the kept turns, start early and cost little.)"""
    import shutil

    from mlx_slm.apps.chat import ChatSession
    from mlx_slm.loader import load
    from mlx_slm.store.files import write_json

    short = tmp_path / "short"
    shutil.copytree(model_dir, short)
    config = json.loads((short / "config.json").read_text())
    write_json(short / "config.json", {**config, "max_context_length": 512})
    model, tokenizer = load(short)
    notes = []
    session = ChatSession(model, tokenizer, max_tokens=12, notify=notes.append)
    base = mx.get_active_memory()
    extra = {}
    for turn in range(100):
        session.send(f"Question number {turn}: what is {turn} plus {turn}?")
        if turn in (60, 80, 99):
            extra[turn] = mx.get_active_memory() - base - sum(c.nbytes for c in session.cache)
    assert notes, "the history never reached the context, so nothing was trimmed"
    assert max(c.offset for c in session.cache) <= model.args.max_context_length
    assert max(c.capacity for c in session.cache) <= model.args.max_context_length
    assert max(extra.values()) < 1024 * 1024, extra
    assert max(extra.values()) - min(extra.values()) < 256 * 1024, extra
