"""The cells of a sweep (model x precision x prompt length), and why any is skipped.

A cell is skipped before anything is built when it cannot run: too long for the context,
more memory than the machine has free, no disk for its model copy, or a precision that a
quantized directory cannot be turned into.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from mlx_slm.bench.precisions import (
    GROUP_SIZE,
    Precision,
    model_at,
    parameter_bytes,
    precision,
    precision_names,
    stored_precision,
)
from mlx_slm.errors import SlmError
from mlx_slm.memory import GB
from mlx_slm.quant import GroupSizeError

SYNTHETIC_SIZES = ("270M", "450M", "1.1B", "3B")


@dataclass
class Source:
    """A model to benchmark: a published or custom shape with seeded random weights, or a
    converted directory."""

    label: str
    config: dict
    model_dir: Path | None = None  # None: synthetic

    @property
    def synthetic(self) -> bool:
        return self.model_dir is None

    def float_weights(self, seed: int) -> dict:
        """The weights to build each precision from, lazily (nothing is read or drawn yet)."""
        from mlx_slm.synthetic import random_weights
        from mlx_slm.weights import load_weights

        if self.synthetic:
            return random_weights(self.config, seed)
        return load_weights(self.model_dir)

    def stored(self) -> Precision | None:
        """A directory's own precision; None for synthetic models."""
        return None if self.synthetic else stored_precision(self.model_dir, self.config)


def synthetic_sources(spec: str) -> list[Source]:
    """`spec` is a size (270M, 450M, 1.1B, 3B), 'all', or the path of a config.json."""
    from mlx_slm.model import ModelArgs
    from mlx_slm.synthetic import published_config
    from mlx_slm.weights import read_json

    if spec == "all":
        return [Source(size, published_config(size)) for size in SYNTHETIC_SIZES]
    path = Path(spec).expanduser()
    if path.suffix == ".json" or path.is_file():
        config = read_json(path, "a model configuration")
        ModelArgs.from_config(config)
        return [Source(path.parent.name if path.name == "config.json" else path.stem, config)]
    config = published_config(spec)
    return [Source(spec.replace("1_1B", "1.1B"), config)]


def directory_source(path: str) -> Source:
    """A converted model directory, benchmarked by its directory name."""
    from mlx_slm.weights import read_config

    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise SlmError(f"Model directory {model_dir} does not exist.")
    return Source(model_dir.resolve().name, read_config(model_dir), model_dir)


@dataclass
class Cell:
    """One measurement: a model at a precision, a prompt length and a generation length."""

    source: Source
    precision: Precision
    prompt_tokens: int
    gen_tokens: int
    skip_reason: str | None = None


@dataclass
class Group:
    """The cells of one model at one precision, which share one build and one load."""

    source: Source
    precision: Precision
    weight_bytes: int
    parameters: int
    needs_copy: bool  # built into a temporary directory first (else loaded where it is)
    cells: list[Cell] = field(default_factory=list)


def needed_bytes(config: dict, weight_bytes: int, tokens: int) -> int:
    """Memory a cell needs: weights plus a float32 KV cache for `tokens`, with slack."""
    from mlx_slm.apps.model_loading import OVERHEAD
    from mlx_slm.sizes import kv_cache_bytes

    return math.ceil((weight_bytes + kv_cache_bytes(config, tokens, 4)) * OVERHEAD)


def plan(sources: list[Source], precisions: list[str] | None, prompt_lengths: list[int],
         gen_tokens: int, *, seed: int = 0, force: bool = False,
         available: int | None = None, free_disk: int | None = None,
         temp_dir: str = "the temporary directory") -> list[Group]:
    """Every cell to run, in order, each either runnable or carrying its skip reason.

    `precisions` None means every precision for synthetic models and the stored one for
    directories. `available` is free memory and `free_disk` free space for model copies
    (None: unknown, nothing skipped for it); `force` skips no cell for memory.
    """
    from mlx_slm.sizes import parameter_count

    groups = []
    for source in sources:
        stored = source.stored()
        parameters = parameter_count(source.config)
        for name in dict.fromkeys(precisions or ([stored.name] if stored else precision_names())):
            prec = stored if stored is not None and name == stored.name else precision(
                name, source.config)
            group = Group(source, prec, 0, parameters, needs_copy=prec != stored)
            reason = None
            if group.needs_copy and stored is not None and stored.quantized:
                reason = (f"{source.model_dir} is stored as {stored.name}; a quantized "
                          "directory is benchmarked at its own precision only")
            else:
                try:
                    group.weight_bytes = _weight_bytes(source, prec, group.needs_copy, seed)
                except GroupSizeError as err:  # bench has no --q-group-size to suggest
                    reason = (f"cannot be built at {prec.name}: {str(err).split(';')[0]} "
                              f"(bench quantizes with group size {GROUP_SIZE})")
                    if err.fits:
                        reason += (f"; quantize it with mlx-slm quantize --q-group-size "
                                   f"{err.fits} and bench that directory with -m")
                except (SlmError, ValueError) as err:
                    reason = f"cannot be built at {prec.name}: {err}"
            if reason is None and group.needs_copy and free_disk is not None \
                    and group.weight_bytes > free_disk:
                reason = (f"its {group.weight_bytes / GB:.1f} GB model copy does not fit in "
                          f"the {free_disk / GB:.1f} GB free in {temp_dir}")
            for prompt in prompt_lengths:
                cell_reason = reason or _cell_reason(group, prompt + gen_tokens, force, available)
                group.cells.append(Cell(source, prec, prompt, gen_tokens, cell_reason))
            groups.append(group)
    return groups


def _weight_bytes(source: Source, prec: Precision, needs_copy: bool, seed: int) -> int:
    if not needs_copy:
        from mlx_slm.sizes import weight_bytes

        return weight_bytes(source.model_dir)
    # Built lazily: the byte count comes from shapes; no weight is drawn or read.
    model, _ = model_at(source.config, source.float_weights(seed), prec, source.label)
    return parameter_bytes(model)


def _cell_reason(group: Group, tokens: int, force: bool, available: int | None) -> str | None:
    context = group.source.config.get("max_context_length", 2048)
    if tokens > context:
        return f"prompt + generation ({tokens} tokens) exceed the {context}-token context"
    if force or available is None:
        return None
    needed = needed_bytes(group.source.config, group.weight_bytes, tokens)
    if needed > available:
        return (f"needs about {needed / GB:.1f} GB (weights + KV cache) but "
                f"{available / GB:.1f} GB is available")
    return None


def describe_plan(groups: list[Group], reps: int, warmup: int, bandwidth_gbs: float | None,
                  engines: int = 1) -> str:
    """What a sweep will run, and a floor on how long it takes: every generated token reads
    the weights once, at best at the memory bandwidth (prompt passes and model builds come
    on top, and slow backends run far below that ceiling)."""
    from mlx_slm.bench.timing import WARMUP_TOKENS

    cells = [c for g in groups for c in g.cells]
    runnable = [c for c in cells if c.skip_reason is None]
    models = len({g.source.label for g in groups})
    precisions = len({g.precision.name for g in groups})
    lengths = len({c.prompt_tokens for c in cells})
    line = (f"Plan: {len(cells)} cells ({models} model(s) x {precisions} precision(s) x "
            f"{lengths} prompt length(s)), {len(cells) - len(runnable)} to skip; each cell: "
            f"{warmup} warm-up + {reps} timed run(s)")
    if engines > 1:
        line += f", for each of {engines} engines"
    if bandwidth_gbs and runnable:
        read = sum(g.weight_bytes * (reps * c.gen_tokens + warmup * WARMUP_TOKENS)
                   for g in groups for c in g.cells if c.skip_reason is None)
        floor_s = engines * read / (bandwidth_gbs * GB)
        line += (f". Estimate: at least {_duration(floor_s)} (generation at the "
                 f"{bandwidth_gbs:.0f} GB/s memory-bandwidth ceiling; prompt passes and model "
                 "builds come on top, and a CPU backend runs several times slower)")
    return line + "."


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
