"""Storage: atomic directories, manifests, the model cache home, synthetic checkpoints."""
