"""What produced a number: the MLX backend and, on the CPU backend, the BLAS under it.

Every figure the tools print or write carries `runtime_report()`, so a reader always knows
which backend measured it.
"""

import mlx.core as mx


def active_backend() -> str:
    """The MLX backend in use: 'metal', 'cuda' or 'cpu'."""
    device = mx.default_device()
    if device.type == mx.gpu:
        return "cuda" if mx.cuda.is_available() else "metal"
    return "cpu"


def runtime_report() -> dict:
    """The backend and the BLAS serving MLX (named as in JSON outputs and benchmark rows)."""
    from mlx_slm.cpu.blas import blas_in_use

    return {"backend": active_backend(), "blas": blas_in_use()}
