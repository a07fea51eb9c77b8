"""Hub -> MLX conversion and the auto-convert cache."""
