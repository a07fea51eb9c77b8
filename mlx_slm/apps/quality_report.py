"""Quality reports on model directories: perplexity of one, the cost of a quantization of two.

Both models run with float32 activations by default (float16/bfloat16 weights and quantized
scales upcast exactly), so the comparison measures the quantization itself, not float16
rounding of activations; `dtype` picks another compute precision.
"""

import hashlib
import time
from pathlib import Path

from mlx_slm.errors import SlmError
from mlx_slm.progress import progress_bar
from mlx_slm.sizes import footprint, human_bytes
from mlx_slm.tokenizer import TOKENIZER_FILE
from mlx_slm.weights import read_config

# ModelArgs fields that decide tensor shapes: models that differ here cannot be compared.
SHAPE_KEYS = (
    "model_dim", "head_dim", "num_transformer_layers", "num_query_heads", "num_kv_heads",
    "ffn_multipliers", "ffn_dim_divisor", "ffn_with_glu", "vocab_size",
    "share_input_output_layers", "normalize_qk_projections",
)


def check_comparable(base_dir: Path, quant_dir: Path, base_config: dict,
                     quant_config: dict) -> Path:
    """Refuse two models with different shapes or tokenizers; returns a dir with a tokenizer.

    One tokenizer.model is enough (a Hub checkpoint has none); two must be the same file.
    """
    from mlx_slm.model import ModelArgs

    if base_config.get("quantization") and not quant_config.get("quantization"):
        raise SlmError(f"{base_dir} is quantized and {quant_dir} is not: the arguments look "
                       "swapped; give the full model first (BASE_DIR QUANT_DIR).")
    base_args, quant_args = ModelArgs.from_config(base_config), ModelArgs.from_config(quant_config)
    for key in SHAPE_KEYS:
        ours, theirs = getattr(base_args, key), getattr(quant_args, key)
        if ours != theirs:
            raise SlmError(
                f"{base_dir} and {quant_dir} have different shapes ({key} {ours!s:.40} vs "
                f"{theirs!s:.40}); compare a quantized model with the model it was made from."
            )
    digests = {d: tokenizer_digest(d) for d in (base_dir, quant_dir)
               if (d / TOKENIZER_FILE).is_file()}
    if not digests:
        raise SlmError(f"Neither {base_dir} nor {quant_dir} has a {TOKENIZER_FILE}: scoring a "
                       "text needs the model's tokenizer.")
    if len(set(digests.values())) > 1:
        raise SlmError(
            f"{base_dir} and {quant_dir} have different tokenizers ({TOKENIZER_FILE} differs); "
            "their token probabilities cannot be compared."
        )
    return next(iter(digests))


def tokenizer_digest(model_dir: Path) -> str:
    """sha256 of a directory's tokenizer.model."""
    return hashlib.sha256((Path(model_dir) / TOKENIZER_FILE).read_bytes()).hexdigest()


def _model_dir(path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise SlmError(f"Model directory {path} does not exist.")
    return path


def _text_ids(model_dir: Path, text_path, max_tokens: int | None):
    from mlx_slm.apps.quality import read_text
    from mlx_slm.tokenizer import Tokenizer

    text, label = read_text(text_path)
    tokenizer = Tokenizer(model_dir / TOKENIZER_FILE)
    ids = tokenizer.encode(text, bos=False)
    return (ids[:max_tokens] if max_tokens else ids), tokenizer.bos_id, label


def measure_perplexity(model_dir, text_path=None, max_tokens: int | None = None,
                       dtype: str | None = "float32", window: int | None = None) -> dict:
    """Perplexity of one model on a text file (default: the built-in sample)."""
    from mlx_slm.apps.quality import score
    from mlx_slm.backend import active_backend
    from mlx_slm.loader import load_model

    model_dir = _model_dir(model_dir)
    config = read_config(model_dir)
    ids, bos_id, label = _text_ids(model_dir, text_path, max_tokens)
    model, _ = load_model(model_dir, dtype)
    start = time.perf_counter()
    with progress_bar(len(ids), "Scoring", unit="tok") as bar:
        result = score(model, ids, bos_id, window=window, on_progress=bar.update)
    return {
        "text": label, **result, "dtype": dtype or "model", "backend": active_backend(),
        "seconds": time.perf_counter() - start, "model": footprint(model_dir, config),
    }


def compare(base_dir, quant_dir, text_path=None, max_tokens: int | None = None,
            dtype: str | None = "float32", window: int | None = None) -> dict:
    """Perplexity of both, mean KL(base || quant), top-1 agreement, sizes and memory."""
    from mlx_slm.apps.quality import score
    from mlx_slm.backend import active_backend
    from mlx_slm.loader import load_model

    base_dir, quant_dir = _model_dir(base_dir), _model_dir(quant_dir)
    base_config, quant_config = read_config(base_dir), read_config(quant_dir)
    tokenizer_dir = check_comparable(base_dir, quant_dir, base_config, quant_config)
    ids, bos_id, label = _text_ids(tokenizer_dir, text_path, max_tokens)
    base, _ = load_model(base_dir, dtype)
    quant, _ = load_model(quant_dir, dtype)
    start = time.perf_counter()
    with progress_bar(len(ids), "Scoring both", unit="tok") as bar:
        result = score(base, ids, bos_id, quant, window=window, on_progress=bar.update)
    report = {
        "text": label, **result, "dtype": dtype or "model", "backend": active_backend(),
        "base": footprint(base_dir, base_config), "quant": footprint(quant_dir, quant_config),
    }
    if _runs_int8(quant_config) and not _runs_int8(base_config):
        # What the int8 activations cost: the same comparison with float activations.
        from mlx_slm.cpu import kernels

        with kernels.int8_activations(False), progress_bar(
                len(ids), "Scoring with float activations", unit="tok") as bar:
            exact = score(base, ids, bos_id, quant, window=window, on_progress=bar.update)
        report["kl_mean_float_activations"] = exact["kl_mean"]
    return {**report, "seconds": time.perf_counter() - start}


def _runs_int8(config: dict) -> bool:
    """Whether a model of this config meets int8 activations on this machine (the CPU
    kernels' default for 4- and 8-bit weights)."""
    from mlx_slm.backend import active_backend
    from mlx_slm.cpu import kernels

    entry = config.get("quantization")
    return (bool(entry) and active_backend() == "cpu"
            and kernels.quant_method(entry.get("bits", 4)) == "int8")


def _heading(report: dict) -> str:
    return (f"Scored on the {report['text']}: {report['tokens']:,} tokens in windows of "
            f"{report['window']}, {report['dtype']} compute, {report['backend']} backend "
            f"({report['seconds']:.1f} s)")


def format_perplexity(report: dict) -> str:
    """The text `mlx-slm perplexity` prints."""
    model = report["model"]
    return "\n".join([
        _heading(report),
        f"perplexity: {report['perplexity']:.3f}  ({model['precision']}, "
        f"{human_bytes(model['weight_bytes'])} of weights)",
    ])


def format_quality_report(report: dict) -> str:
    """The table `mlx-slm quality` (and `quantize`) prints."""
    base, quant = report["base"], report["quant"]
    change = report["perplexity_quant"] / report["perplexity"] - 1
    rows = [
        ("", base["precision"], quant["precision"], ""),
        ("perplexity", f"{report['perplexity']:.3f}", f"{report['perplexity_quant']:.3f}",
         f"{change:+.2%}"),
        ("weights on disk", human_bytes(base["size_on_disk_bytes"]),
         human_bytes(quant["size_on_disk_bytes"]), ""),
        ("weight memory", human_bytes(base["weight_bytes"]), human_bytes(quant["weight_bytes"]),
         f"{quant['weight_bytes'] / base['weight_bytes']:.3f}x base, "
         f"{quant['float16_ratio']:.3f}x float16"),
        ("bits per weight", f"{base['bits_per_weight']:.2f}", f"{quant['bits_per_weight']:.2f}",
         ""),
    ]
    lines = [_heading(report)]
    lines += [f"{a:<16}{b:>20}{c:>20}  {d}".rstrip() for a, b, c, d in rows]
    lines.append(f"{'KL(base||quant)':<16}{report['kl_mean']:>20.5f}  nats per token (mean)")
    lines.append(f"{'top-1 agreement':<16}{report['top1_agreement']:>20.2%}")
    if "kl_mean_float_activations" in report:
        exact = report["kl_mean_float_activations"]
        added = (report["kl_mean"] - exact) / exact if exact > 0 else 0.0
        lines.append(f"int8 activations (the CPU kernels' default) add {added:+.2%} to the KL "
                     f"of float ones ({exact:.5f}); MLX_SLM_KERNELS=float keeps float")
    return "\n".join(lines)
