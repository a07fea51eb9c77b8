"""`mlx-slm bench`: throughput, latency and memory per model size, precision and length.

timing: one honest run and the spread of repetitions. bandwidth: the memory-bandwidth
ceiling and bytes read per token. machine: what produced a number. precisions: models at
each precision, synthetic or converted. plan: the cells of a sweep and which are skipped.
runner: runs the cells through our generation path (and mlx-lm's). report/plot: output.
"""
