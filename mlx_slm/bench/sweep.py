"""What `mlx-slm bench` does, as a library call: plan the cells, find the bandwidth
ceiling, run, and return the rows. The benchmarks/ scripts call this too."""

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mlx_slm.apps.drafting import DraftOptions
from mlx_slm.errors import SlmError

DEFAULT_PROMPT_LENGTHS = (128, 1024)
# Plain `mlx-slm bench`: one small size at one prompt length, minutes rather than the half
# hour of every size (`-s all`, asked for by name).
QUICK_SIZES = ("270M",)
QUICK_PROMPT_LENGTHS = (128,)


@dataclass
class BenchRequest:
    """A sweep: models (synthetic sizes/configs and directories) x precisions x lengths."""

    synthetic: tuple[str, ...] = ()
    model_dirs: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()  # empty: every one (synthetic), the stored one (dirs)
    prompt_lengths: tuple[int, ...] = DEFAULT_PROMPT_LENGTHS
    gen_tokens: int = 128
    reps: int = 3
    warmup: int = 1
    bandwidth: float | None = None  # GB/s; None: Apple's table or a cached measurement
    compare: bool = False  # also time mlx-lm on the same files
    seed: int = 0
    force: bool = False  # run cells the memory check would skip
    time_limit: float | None = None  # seconds per engine and cell, checked at each token
    draft: DraftOptions = DraftOptions()  # also decode every cell with this draft


def run_bench(request: BenchRequest,
              on_progress: Callable[[int, int, str], None] | None = None,
              available: int | None = None,
              on_plan: Callable[[str], None] | None = None) -> list[dict]:
    """Every cell's row, in sweep order; `available` overrides the free-memory reading."""
    return list(iter_bench(request, on_progress, available, on_plan))


def iter_bench(request: BenchRequest,
               on_progress: Callable[[int, int, str], None] | None = None,
               available: int | None = None,
               on_plan: Callable[[str], None] | None = None) -> Iterator[dict]:
    """The rows as each model's cells complete, so an interrupted sweep keeps the finished
    ones; `on_plan` first receives what will run and a time estimate."""
    from mlx_slm.bench.bandwidth import resolve_bandwidth
    from mlx_slm.bench.engines import OurEngine
    from mlx_slm.bench.machine import load_warning, machine_info
    from mlx_slm.bench.plan import describe_plan, directory_source, plan, synthetic_sources
    from mlx_slm.bench.runner import Settings, run_sweep
    from mlx_slm.memory import available_bytes

    if request.gen_tokens < 2:
        raise SlmError("Generate at least 2 tokens: generation tok/s is timed after the first.")
    engines = [OurEngine()]
    if request.compare:
        from mlx_slm.bench.mlx_lm_peer import MlxLmEngine

        engines.append(MlxLmEngine())
    if request.draft.model is not None:
        from mlx_slm.apps.drafting import resolve_draft_dir
        from mlx_slm.apps.model_loading import resolve_model_dir
        from mlx_slm.bench.engines import DraftedEngine

        target = resolve_model_dir(request.model_dirs[0]) if request.model_dirs else None
        engines.append(DraftedEngine(resolve_draft_dir(request.draft.model, target),
                                     request.draft.num_draft_tokens))
    sources = [s for spec in request.synthetic for s in synthetic_sources(spec)]
    sources += [directory_source(d) for d in request.model_dirs]
    if not sources:
        sources = synthetic_sources("all")
    temp_dir = tempfile.gettempdir()
    groups = plan(sources, list(request.precisions) or None,
                  list(dict.fromkeys(request.prompt_lengths)), request.gen_tokens,
                  seed=request.seed, force=request.force,
                  available=available_bytes() if available is None else available,
                  free_disk=shutil.disk_usage(temp_dir).free, temp_dir=temp_dir)
    gbs, where = resolve_bandwidth(request.bandwidth)
    settings = Settings(reps=request.reps, warmup=request.warmup, seed=request.seed,
                        bandwidth_gbs=gbs, bandwidth_source=where,
                        time_limit_s=request.time_limit)
    if on_plan is not None:
        on_plan(describe_plan(groups, settings.reps, settings.warmup, gbs, len(engines)))
    machine = machine_info()
    if (warning := load_warning(machine["load_average"])) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        yield from run_sweep(groups, settings, machine, on_progress, engines=engines)
    finally:
        for engine in engines:
            engine.close()
