"""mlx-slm's own files (converted models, the measured bandwidth) live under one root."""

import os
from pathlib import Path

HOME_ENV = "MLX_SLM_HOME"


def home() -> Path:
    """$MLX_SLM_HOME, else ~/.cache/mlx-slm."""
    root = os.environ.get(HOME_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mlx-slm"
