"""Which MLX backend runs: every figure the tools print names it."""

import mlx.core as mx


def active_backend() -> str:
    """The MLX backend in use: 'metal', 'cuda' or 'cpu'."""
    device = mx.default_device()
    if device.type == mx.gpu:
        return "cuda" if mx.cuda.is_available() else "metal"
    return "cpu"
