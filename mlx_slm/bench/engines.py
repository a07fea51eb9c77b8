"""Our engines for the benchmark: the real loader and generation loop, plain and with a
draft model (mlx-lm's engine, the peer, is in mlx_lm_peer.py)."""

from collections.abc import Iterable
from pathlib import Path

from mlx_slm.bench.bandwidth import weight_bytes_read
from mlx_slm.bench.precisions import parameter_bytes
from mlx_slm.bench.timing import summarize
from mlx_slm.memory import restart_peak_rss


class OurEngine:
    """mlx-slm's real path: the loader and `generate_tokens` with no stop ids (EOS ignored)."""

    name = "mlx-slm"

    def __init__(self):
        self.cache = None
        self.step = None

    def load(self, model_dir: Path):
        """The model, by the loader `mlx-slm generate` uses, and its compiled decode step."""
        from mlx_slm.generation import DecodeStep
        from mlx_slm.loader import load_model

        model = load_model(model_dir)[0]
        self.step = DecodeStep(model)  # traced in the warm-up run, reused by the timed ones
        return model

    def tokens(self, model, prompt: list[int], n: int) -> Iterable[int]:
        """A lazy generator of `n` greedy token ids after `prompt`, EOS included."""
        from mlx_slm.cache import make_cache
        from mlx_slm.generation import generate_tokens

        # Our own cache, so the bytes attention reads can be taken from its real dtype.
        self.cache = make_cache(model)
        return generate_tokens(model, prompt, cache=self.cache, max_tokens=n, stop_ids=(),
                               step=self.step)

    def reset_peaks(self) -> str:
        """Restart MLX's and the process's peaks; the scope the next RSS reading covers."""
        from mlx_slm.memory import reset_mlx_peak

        reset_mlx_peak()
        return restart_peak_rss()

    def peaks(self) -> dict:
        from mlx_slm.memory import mlx_peak_bytes, peak_rss_bytes

        return {"peak_memory_bytes": mlx_peak_bytes(), "peak_rss_bytes": peak_rss_bytes()}

    def sizes(self, model) -> dict:
        """The bytes a token reads: the weights as loaded, and the KV cache's element size."""
        return {"weight_bytes": parameter_bytes(model),
                "weight_bytes_read": weight_bytes_read(model),
                "kv_itemsize": self.cache[0].keys.dtype.size}

    def release(self) -> None:
        """Drop the references to the last model's cache and compiled step."""
        self.cache = self.step = None

    def close(self) -> None:
        pass


class DraftedEngine(OurEngine):
    """Our path with a draft model (speculative decoding), compared with the plain path on
    the same cells: its row fields say whether the draft pays."""

    name = "mlx-slm+draft"

    def __init__(self, draft_dir: Path, num_draft_tokens: int | None = None):
        super().__init__()
        self.draft_dir = Path(draft_dir)
        self.num_draft_tokens = num_draft_tokens
        self.draft = None

    def load(self, model_dir: Path):
        from mlx_slm.loader import load_model
        from mlx_slm.speculative import Draft

        model = super().load(model_dir)
        self.draft = Draft(load_model(self.draft_dir)[0], self.num_draft_tokens)
        return model

    def tokens(self, model, prompt: list[int], n: int) -> Iterable[int]:
        from mlx_slm.cache import make_cache

        self.cache = make_cache(model)
        return self.draft.generate_tokens(model, prompt, cache=self.cache, max_tokens=n,
                                          step=self.step)

    def run_stats(self) -> dict:
        """What the draft did in the last run (greedy runs of a cell all do the same)."""
        return self.draft.stats.as_dict()

    def row_fields(self, measured: dict, row: dict) -> dict:
        summary = summarize(measured["timings"])
        stats = measured["draft"]
        return {
            "draft_model": str(self.draft_dir),
            "num_draft_tokens": self.num_draft_tokens,
            "draft_gen_tps": summary["gen_tps"],
            "draft_gen_tps_stdev": summary["gen_tps_stdev"],
            "draft_speedup": summary["gen_tps"] / row["gen_tps"] if row["gen_tps"] else None,
            **{key: stats[key] for key in ("acceptance_rate", "mean_accepted", "drafted",
                                           "accepted")},
        }
