"""What produced a number: the MLX backend and, on the CPU backend, the BLAS under it and
the kernels its quantized and half-precision products ran on.

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
    """The backend, the BLAS serving MLX and the kernels for quantized and half-precision
    products (named as in JSON outputs and benchmark rows)."""
    from mlx_slm.cpu import kernels
    from mlx_slm.cpu.blas import blas_in_use

    backend = active_backend()
    return {"backend": backend, "blas": blas_in_use(),
            "kernels": kernels.status() if backend == "cpu" else "mlx"}
