"""CPU-backend execution: native kernels (kernels/) and, after the restructure, layer swaps."""
