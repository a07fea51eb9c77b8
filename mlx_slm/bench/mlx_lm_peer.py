"""mlx-lm's own loader and generation on the same model directory, for ours/theirs ratios.

mlx-lm is optional: it is imported only when a comparison is asked for.
"""

import importlib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from mlx_slm.errors import SlmError


class MlxLmEngine:
    """mlx-lm's `load_model` and `generate_step` (which never stops at EOS)."""

    name = "mlx-lm"

    def __init__(self):
        try:
            self._utils = importlib.import_module("mlx_lm.utils")
            self._generate = importlib.import_module("mlx_lm.generate")
        except ImportError:
            raise SlmError("--compare mlx-lm needs mlx-lm: pip install mlx-lm") from None
        self.version = metadata.version("mlx-lm")

    def load(self, model_dir: Path):
        """mlx-lm's model for the directory (its own class, its own weight loading)."""
        return self._utils.load_model(Path(model_dir))[0]

    def tokens(self, model, prompt: list[int], n: int) -> Iterable[int]:
        """A lazy generator of `n` greedy token ids after `prompt`."""
        import mlx.core as mx

        steps = self._generate.generate_step(mx.array(prompt, mx.uint32), model, max_tokens=n)
        return (token for token, _ in steps)
