"""Checkpoint -> MLX model directory: read, check, cast, optionally quantize, write atomically.

The output holds config.json (the source's, plus our metadata and any quantization),
model.safetensors (or shards with an index), the Llama-2 tokenizer.model, a small
tokenizer_config.json so that mlx-lm (through transformers) can load the directory too, and
manifest.json (sizes and hashes of the others, written last).
"""

import errno
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlx_slm.chat_format import METADATA_KEY
from mlx_slm.errors import SlmError
from mlx_slm.sizes import default_dtype
from mlx_slm.store.files import write_json
from mlx_slm.store.manifest import write_manifest
from mlx_slm.store.staging import (
    check_apart,
    check_destination,
    check_disk_space,
    staged_directory,
)
from mlx_slm.tokenizer import TOKENIZER_FILE
from mlx_slm.weights import CONFIG_FILE, DEFAULT_SHARD_BYTES

from .hub import first_line
from .llama_tokenizer import TokenizerFile
from .source import Source, open_source

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Not carried over from the source config: auto_map names remote-code files we do not ship
# (transformers would ask whether to run them); the rest we write afresh.
DROPPED_KEYS = ("auto_map", "quantization", "quantization_config", METADATA_KEY)
MLX_WRITE_FAILED = "[write]"  # how MLX's RuntimeError for a failed write begins


@dataclass
class Conversion:
    """What a conversion wrote, for the summary."""

    out_dir: Path
    source: str
    revision: str | None
    dtype: str
    quantization: dict | None
    tokenizer: TokenizerFile
    instruct: bool
    source_path: Path | None = None  # the local Hub-layout directory converted from
    bytes: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def log_to_stderr(message: str) -> None:
    """Progress lines go to stderr: stdout may carry generated text."""
    print(message, file=sys.stderr)


def tokenizer_config(config: dict) -> dict:
    """The minimal tokenizer_config.json from which transformers builds the Llama tokenizer."""
    return {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        # SentencePiece's own behaviour (transformers 4.x; 5.x ignores it and differs only
        # for text that starts with a space).
        "legacy": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config.get("max_context_length", 2048),
    }


def convert(source: str | Path, out_dir: str | Path, *, revision: str | None = None,
            dtype: str | None = None, tokenizer: str | None = None, force: bool = False,
            quantize: bool = False, q_bits: int = 4, q_group_size: int = 64,
            q_recipe: str | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
            instruct: bool | None = None, log=None) -> Conversion:
    """Convert SOURCE (a Hub repo id or a Hub-layout directory) into the MLX directory OUT_DIR."""
    log = log or log_to_stderr
    source = str(source)
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().absolute()
    src_path = Path(source).expanduser()
    if src_path.is_dir():
        check_apart(src_path, out_dir)
    check_destination(out_dir, force)
    # The whole conversion holds the destination's lock, so that a second one stops at once.
    with staged_directory(out_dir, force) as tmp:
        src = open_source(source, revision, tokenizer, log)
        dtype = dtype or default_dtype(src.config)
        log(f"Converting {source} to {dtype}...")
        model, quantization = convert_model(src, dtype, quantize, q_bits, q_group_size, q_recipe)
        result = Conversion(
            out_dir=out_dir, source=src.name, revision=src.revision, dtype=dtype,
            quantization=quantization, tokenizer=src.tokenizer,
            instruct=src.instruct if instruct is None else instruct, source_path=src.path,
        )
        check_disk_space(out_dir, model)
        write_model_dir(tmp, model, src, result, max_shard_bytes)
    # The weight files only, as info and quality count "weights on disk".
    result.bytes = sum((out_dir / name).stat().st_size for name in result.files)
    result.seconds = time.perf_counter() - start
    return result


def convert_model(src: Source, dtype: str, quantize: bool, q_bits: int, q_group_size: int,
                  q_recipe: str | None):
    """The source's model, checked, cast and (if asked) quantized, with its quantization entry.

    Lazy: nothing is computed until the weights are written.
    """
    import mlx_slm.quant as quant
    from mlx_slm.loader import model_from_weights
    from mlx_slm.weights import load_weights

    quantization = src.config.get("quantization")
    if quantize and quantization:
        raise SlmError(f"{src.name} is already quantized; convert its unquantized source instead.")
    model = model_from_weights(src.config, load_weights(src.path), src.path, dtype)
    if quantize:
        try:
            quantization = quant.quantize(
                model, bits=q_bits, group_size=q_group_size, recipe=q_recipe
            )
        except ValueError as err:  # MLX: a layer width not divisible by the group size
            raise SlmError(f"Cannot quantize {src.name}: {first_line(err)}") from None
    return model, quantization


def output_config(src: Source, result: Conversion) -> dict:
    """The source's config.json with our metadata, the dtype and any quantization."""
    from mlx_slm.version import __version__

    config = {k: v for k, v in src.config.items() if k not in DROPPED_KEYS}
    config["torch_dtype"] = result.dtype
    config[METADATA_KEY] = {
        "source": result.source,
        "revision": result.revision,
        "dtype": result.dtype,
        "instruct": result.instruct,
        "tokenizer_sha256": result.tokenizer.sha256,
        "version": __version__,
    }
    if result.quantization:
        config["quantization"] = result.quantization
    return config


def write_model_dir(out: Path, model, src: Source, result: Conversion,
                    max_shard_bytes: int) -> None:
    """Write weights, tokenizer and configs into the (empty, temporary) directory `out`."""
    from mlx.utils import tree_flatten

    from mlx_slm.progress import progress_bar
    from mlx_slm.weights import read_headers, save_weights

    weights = dict(tree_flatten(model.parameters()))
    bar = progress_bar(sum(a.nbytes for a in weights.values()), "Writing weights", unit="B")
    try:
        result.files = save_weights(out, weights, max_shard_bytes, on_progress=bar.update)
        shutil.copyfile(result.tokenizer.path, out / TOKENIZER_FILE)
        write_json(out / TOKENIZER_CONFIG_FILE, tokenizer_config(src.config))
        write_json(out / CONFIG_FILE, output_config(src, result))
        read_headers(out)  # a short write shows up here, not at load time
        write_manifest(out)
    except (OSError, RuntimeError) as err:
        raise write_error(result.out_dir, err) from None
    finally:
        bar.close()


def write_error(out_dir: Path, err: Exception) -> SlmError:
    """A failed write as one line; for want of space or of a larger file-size limit, what to do."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full; free some space or choose another output directory"
    elif code == errno.EFBIG:
        why = ("a file is over the file-size limit (ulimit -f) or the file system's; raise the "
               "limit, pass a smaller --max-shard-size, or choose another output directory")
    elif isinstance(err, RuntimeError) and first_line(err).startswith(MLX_WRITE_FAILED):
        # MLX's writer says only how many bytes it could not write, not why.
        detail = first_line(err).removeprefix(MLX_WRITE_FAILED).strip().rstrip(".")
        why = (f"{detail} (the disk is full, or a file is over the size limit); free some "
               "space, raise the limit (ulimit -f), or choose another output directory")
    else:
        why = first_line(err)
    return SlmError(f"Writing {out_dir} failed: {why}.")
