"""CPU-backend execution: layer swaps, BLAS loading and native kernels."""
