"""What produced a number: the MLX backend and, on the CPU backend, the BLAS under it and
the kernels its quantized and half-precision products ran on.

Every figure the tools print or write carries `runtime_report()`, so a reader always knows
which backend measured it.
"""

from mlx_slm.backend import active_backend
from mlx_slm.cpu import kernels
from mlx_slm.cpu.blas import blas_in_use


def runtime_report() -> dict:
    """The backend, the BLAS serving MLX and the kernels for quantized and half-precision
    products (named as in JSON outputs and benchmark rows)."""
    backend = active_backend()
    return {"backend": backend, "blas": blas_in_use(),
            "kernels": kernels.status() if backend == "cpu" else "mlx"}
