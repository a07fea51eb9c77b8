"""mlx-slm: run Apple's OpenELM small language models on MLX."""

from mlx_slm import blas as _blas

# Before anything in the package imports mlx.core (see blas.py).
_blas.preload()

__version__ = "0.1.0"
