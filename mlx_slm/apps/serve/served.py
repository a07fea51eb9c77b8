"""One served model: the loaded model, its batcher and its prefix cache."""

import functools
import time
from dataclasses import dataclass, field

from mlx_slm.apps.serve.metrics import StepTimes
from mlx_slm.batch_cache import BatchCache
from mlx_slm.batch_generation import BatchGenerator, Row
from mlx_slm.prefix_cache import PrefixCache
from mlx_slm.sizes import kv_cache_bytes


@dataclass
class ServedModel:
    """One served model with its running batch and prefix cache."""

    name: str
    loaded: object  # apps.model_loading.LoadedModel
    prefix: PrefixCache
    times: StepTimes  # the worker's, where leaving rows' copies are counted
    generator: BatchGenerator = None
    jobs: dict = field(default_factory=dict)  # Row -> Job, for the rows running

    def __post_init__(self):
        from mlx_slm.cpu.report import runtime_report
        from mlx_slm.loader import model_dtype

        self.generator = BatchGenerator(self.loaded.model, on_leave=self._keep_prefix)
        self.token_bytes = kv_cache_bytes(self.loaded.config, 1, 4)  # float32 keys and values
        # Which kernels produce the figures, reported with every response's timings.
        self.report = {**runtime_report(), "dtype": model_dtype(self.loaded.model)}

    @functools.cached_property
    def vocab(self):
        """The tokenizer as the grammar engine sees it: made at the first response_format."""
        from mlx_slm.constrain import GrammarVocabulary

        return GrammarVocabulary(self.loaded.tokenizer)

    def _keep_prefix(self, row: Row, cache: BatchCache) -> None:
        """A leaving row's keys and values, for later prompts that start the same way (a step
        queued ahead may have fed it one id more than it kept: an EOS)."""
        start = time.perf_counter()
        ids = row.ids[: cache.lengths[cache.rows.index(row)]]
        self.prefix.store(ids, cache.row_cache(row, len(ids)))
        self.times.add("copies", start)
