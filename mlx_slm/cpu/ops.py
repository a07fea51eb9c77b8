"""CPU-backend building blocks: quantized and half-precision products, grouped-query
attention, and RoPE tables. layers.py decides where these are used.

Quantized and half-precision products run on the native kernels (mlx_slm.cpu.kernels:
multithreaded SIMD, any row count) where they are built. Without them, MLX's own kernels
for these products are single-threaded loops, so the products are split over MLX CPU
streams (each runs on its own thread), and prompt chunks upcast or dequantize the weight
for float32 BLAS.
"""

import os
import threading

import mlx.core as mx

from mlx_slm.cpu import kernels

# Products with fewer input rows than this (decoding, batched decoding, speculative
# verification) run on the native kernels where built: their rows are bit-identical to
# one-row products, so every batch size decodes the same tokens. Half-precision and float32
# products with more rows (prompt chunks) use float32 BLAS, whose GEMM outruns the kernels
# there (half-precision weights are upcast a slice at a time); so do quantized ones without
# the native kernels.
BLAS_MIN_ROWS = 17
HALF = (mx.float16, mx.bfloat16)
# The float32 copy of weight rows that one stream makes at a time for a prompt chunk: the
# transient memory of half-precision and quantized models stays small next to the weights.
DENSE_CHUNK_BYTES = 8 * 2**20


def cpu_streams() -> list:
    """One MLX CPU stream per core (at most 4), shared by every prepared model run on this
    thread: MLX streams belong to the thread that made them (a server's worker thread
    makes its own)."""
    streams = getattr(_per_thread, "streams", None)
    if streams is None:
        count = max(1, min(4, os.cpu_count() or 1))
        streams = _per_thread.streams = [mx.new_stream(mx.cpu) for _ in range(count)]
    return streams


_per_thread = threading.local()


def split_rows(product, out_features: int, *weights: mx.array) -> mx.array:
    """`product(*weight_slices, stream)` over slices of the output rows, one per stream."""
    streams = cpu_streams()
    count = min(len(streams), max(1, out_features // 256))
    if count == 1:
        return product(*weights, streams[0])
    bounds = [out_features * i // count for i in range(count + 1)]
    parts = [
        product(*(w[bounds[i] : bounds[i + 1]] for w in weights), streams[i])
        for i in range(count)
    ]
    return mx.concatenate(parts, axis=-1)


def _rows(x: mx.array) -> int:
    return x.size // x.shape[-1]


def dense_product(x32: mx.array, make_rows, out_features: int, in_features: int,
                  *weights: mx.array) -> mx.array:
    """x32 @ W.T where `make_rows(*weight_slices, stream)` gives float32 rows of W.

    A prompt chunk needs W in float32 for BLAS; the rows are made a slice per stream at a
    time and evaluated in turn, so at most DENSE_CHUNK_BYTES per stream is ever upcast.
    """
    streams = cpu_streams()
    rows = max(256, DENSE_CHUNK_BYTES // (4 * in_features))
    outputs = []
    for start in range(0, out_features, rows * len(streams)):
        chunk = []
        for i, stream in enumerate(streams):
            a, b = start + i * rows, min(start + (i + 1) * rows, out_features)
            if a < b:
                w = make_rows(*(t[a:b] for t in weights), stream)
                chunk.append(mx.matmul(x32, w.T, stream=stream))
        mx.eval(chunk)
        outputs += chunk
    return outputs[0] if len(outputs) == 1 else mx.concatenate(outputs, axis=-1)


def float_linear(x: mx.array, weight: mx.array, weight_t: mx.array) -> mx.array:
    """x @ weight.T for a float32 weight; `weight_t` is its transpose (x @ W.T costs 3-4x
    x @ W in MLX's CPU products)."""
    if _rows(x) < BLAS_MIN_ROWS and kernels.available():
        return kernels.matmul_t(x, weight)
    return x @ weight_t


def half_linear(x: mx.array, weight: mx.array) -> mx.array:
    """x @ weight.T for a float16/bfloat16 weight on the CPU backend."""
    if _rows(x) < BLAS_MIN_ROWS and kernels.available():
        return kernels.matmul_t(x, weight)
    if _rows(x) >= BLAS_MIN_ROWS:
        def upcast(w, stream):
            return w.astype(mx.float32, stream=stream)

        out, inp = weight.shape
        return dense_product(x.astype(mx.float32), upcast, out, inp, weight).astype(x.dtype)
    return split_rows(lambda w, s: mx.matmul(x, w.T, stream=s), weight.shape[0], weight)


def quantized_linear(x, weight, scales, biases, group_size: int, bits: int, mode: str,
                     packed: bool = False):
    """x @ dequantize(weight).T on the CPU backend; `packed`: the arrays are packed for the
    native kernels (kernels.pack_quantized), which then take every row count.

    The native kernels take every row count and scale dtype. Without them: MLX's kernels
    are 20-100x slower with half-precision scales, so each thread upcasts its slice of them
    per call (a transient 1/group_size of the weight), keeping the stored model small, and
    prompt chunks dequantize slices and use float32 BLAS.
    """
    if packed:
        return kernels.packed_quantized_matmul(x, weight, scales, biases, group_size,
                                               bits).astype(x.dtype)
    if mode == "affine" and kernels.supports(group_size, bits):
        return kernels.quantized_matmul(x, weight, scales, biases, group_size, bits).astype(
            x.dtype)
    x32 = x.astype(mx.float32)
    if _rows(x) >= BLAS_MIN_ROWS:
        def dequantized(w, s, b, stream):
            return mx.dequantize(w, s.astype(mx.float32, stream=stream),
                                 b.astype(mx.float32, stream=stream), group_size=group_size,
                                 bits=bits, mode=mode, stream=stream)

        out, inp = weight.shape[0], scales.shape[-1] * group_size
        return dense_product(x32, dequantized, out, inp, weight, scales, biases).astype(x.dtype)

    def product(w, s, b, stream):
        s, b = s.astype(mx.float32, stream=stream), b.astype(mx.float32, stream=stream)
        return mx.quantized_matmul(x32, w, s, b, transpose=True, group_size=group_size,
                                   bits=bits, mode=mode, stream=stream)

    return split_rows(product, weight.shape[0], weight, scales, biases).astype(x.dtype)


def rotation(cos_table: mx.array, sin_table: mx.array, offset, length: int):
    """cos and sin at positions offset .. offset+length-1 (per row if `offset` is [B])."""
    positions = offset + mx.arange(length)
    if isinstance(offset, mx.array) and offset.ndim == 1:  # one offset per row
        positions = (offset[:, None] + mx.arange(length))[:, None]
    return cos_table[positions], sin_table[positions]


def grouped_attention(queries: mx.array, keys: mx.array, values: mx.array, mask) -> mx.array:
    """Softmax attention where kv head j serves query heads j*g .. j*g+g-1 (no tiling).

    `queries` are pre-scaled [B, n_q, L, hd]; `mask` is None, "causal" (aligned to the end
    of the keys) or a boolean/additive array broadcastable to [B, 1, L, S] or [S].
    """
    B, n_q, L, hd = queries.shape
    boolean = mask is None or isinstance(mask, str) or mask.dtype == mx.bool_
    if L < BLAS_MIN_ROWS and boolean:
        # Decoding, batched decoding and speculative verification: the native kernel computes
        # each position alone over the keys it sees, where BLAS's sums depend on the matrix
        # sizes (and so on the batch and its padding).
        causal = isinstance(mask, str)
        out = kernels.attention(queries, keys, values, causal, None if causal else mask)
        if out is not None:
            return out
    n_kv, S = keys.shape[1], keys.shape[2]
    groups = n_q // n_kv
    scores = queries.reshape(B, n_kv, groups * L, hd) @ keys.swapaxes(-1, -2)
    if L == 1 and (mask is None or (not isinstance(mask, str) and mask.ndim == 1)):
        # Decoding: [B, n_kv, groups, S] takes a per-key mask as is (fewer graph nodes).
        if mask is not None:
            scores = (mx.where(mask, scores, mx.finfo(scores.dtype).min)
                      if mask.dtype == mx.bool_ else scores + mask)
        probs = mx.softmax(scores, axis=-1, precise=True)
        return (probs @ values).reshape(B, n_q, 1, hd)
    scores = scores.reshape(B, n_kv, groups, L, S)
    if isinstance(mask, str):
        mask = mx.arange(S - L, S)[:, None] >= mx.arange(S)[None]
    if mask is not None:
        if mask.ndim == 4:  # [B, 1, L, S] -> [B, 1, 1, L, S]
            mask = mask[:, :, None]
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = mx.softmax(scores, axis=-1, precise=True).reshape(B, n_kv, groups * L, S)
    return (probs @ values).reshape(B, n_q, L, hd)


def rope_tables(head_dim: int, base: float, length: int = 4096) -> tuple[mx.array, mx.array]:
    """cos and sin of RoPE's angles for positions 0..length-1, float32, evaluated."""
    half = head_dim // 2
    inv_freq = base ** (-mx.arange(half, dtype=mx.float32) * 2 / head_dim)
    angles = mx.arange(length, dtype=mx.float32)[:, None] * inv_freq[None]
    tables = (mx.cos(angles), mx.sin(angles))
    mx.eval(tables)
    return tables
