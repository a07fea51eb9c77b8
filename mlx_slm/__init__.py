"""mlx-slm: run Apple's OpenELM small language models on MLX.

    from mlx_slm import load, generate, stream_generate, finetune

The API names are imported on first use, so `import mlx_slm` does not load MLX.
"""

import mlx_slm.cpu.blas as _blas
from mlx_slm.version import __version__

# Before anything in the package imports mlx.core (see cpu/blas.py).
_blas.preload()

__all__ = ["__version__", "finetune", "generate", "load", "stream_generate"]


def __getattr__(name: str):
    if name in ("load", "generate", "stream_generate"):
        import mlx_slm.apps.api as api

        return getattr(api, name)
    if name == "finetune":
        from mlx_slm.apps.finetune_api import finetune

        return finetune
    raise AttributeError(f"module 'mlx_slm' has no attribute {name!r}")
