"""Native CPU kernels for MLX's CPU backend: quantized (MLX's affine format) and float16 /
bfloat16 / float32 matrix products as MLX primitives, written in C++ (src/) with AVX2 and
AVX-512 variants chosen at run time and a persistent thread pool.

Every function here falls back to MLX's own op wherever the native one cannot run: the
extension was not built (macOS, no compiler) or not importable (an mlx other than the one it
was built against), `MLX_SLM_KERNELS=off`, a GPU default device, or an unsupported format.
`MLX_SLM_THREADS=N` sets the pool's size (default: all cores); `MLX_SLM_KERNELS_ISA`
names the variant (see runnable_isas). 4- and 8-bit weights meet activations rounded to
int8 per block of 32 where the CPU has integer dot products (see quant_method);
`MLX_SLM_KERNELS=float` keeps float activations (exact) instead."""

from __future__ import annotations

import contextlib
import functools
import os
from types import ModuleType

import mlx.core as mx

SWITCH = "MLX_SLM_KERNELS"


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    """The compiled module, or None and the reason it is not used."""
    if os.environ.get(SWITCH, "").lower() in ("off", "0", "false", "no"):
        return None, f"disabled by {SWITCH}=off"
    try:
        from mlx_slm.cpu.kernels import _ext
    except ImportError as error:
        return None, f"extension not built: {error}"
    # int8 activations by default: on the 270M shape they add 0.07% to the 4-bit weights'
    # own KL (docs/kernels.md, "int8 activations").
    _ext.set_int8_activations(os.environ.get(SWITCH, "").lower() != "float")
    return _ext, ""


def available() -> bool:
    """Whether the native kernels are built, importable and enabled."""
    return _load()[0] is not None


def status() -> str:
    """One line naming the kernels in use, e.g. "native avx2 2 threads" or "mlx (<why>)"."""
    ext, reason = _load()
    if ext is None:
        return f"mlx ({reason})"
    int8 = ", int8 activations" if ext.quant_method(4) == "int8" else ""
    return f"native {ext.isa()} {ext.threads()} threads{int8}"


def runnable_isas() -> list[str]:
    """The variants this CPU can run, widest first: the values MLX_SLM_KERNELS_ISA takes
    (it picks a narrower one, to test it on a wide CPU). Empty without the extension."""
    ext = _load()[0]
    return ext.runnable_isas() if ext is not None else []


def supports(group_size: int, bits: int) -> bool:
    """Whether quantized_matmul runs natively for this format (else it is MLX's op)."""
    ext = _native()
    return ext is not None and ext.supports_quantized(group_size, bits)


def quant_method(bits: int) -> str:
    """How quantized_matmul meets `bits`-bit weights: "float" (dequantized to float32;
    MLX_SLM_KERNELS=float, or no integer dot products), "int8" (the default on AVX2 and up:
    x rounded to int8 per block of 32, integer dot
    products; error per output at most sum_k |s (q_k - 2^(bits-1))| * max|x_block| / 254)
    or "mlx" (MLX's own op)."""
    ext = _load()[0]
    return "mlx" if ext is None else ext.quant_method(bits)


def set_int8_activations(on: bool) -> None:
    """Turn the int8 path on or off (MLX_SLM_KERNELS=float turns it off at start-up)."""
    ext = _load()[0]
    if ext is not None:
        mx.synchronize()
        ext.set_int8_activations(on)


@contextlib.contextmanager
def int8_activations(on: bool):
    """Within the block, 4- and 8-bit products use int8 activations or not (the setting
    before is restored after)."""
    before = quant_method(4) == "int8"
    set_int8_activations(on)
    try:
        yield
    finally:
        set_int8_activations(before)


def set_threads(n: int) -> None:
    """Resize the native thread pool (waits for pending CPU work first)."""
    ext = _load()[0]
    if ext is not None:
        mx.synchronize()
        ext.set_threads(n)


def _native() -> ModuleType | None:
    ext = _load()[0]
    # Metal and CUDA keep MLX's kernels: nothing GPU-bound may reach these primitives.
    if ext is None or mx.default_device() != mx.cpu:
        return None
    return ext


_FLOATS = (mx.float32, mx.float16, mx.bfloat16)


def quantized_matmul(
    x: mx.array,
    w: mx.array,
    scales: mx.array,
    biases: mx.array,
    group_size: int = 64,
    bits: int = 4,
) -> mx.array:
    """x @ dequantize(w, scales, biases).T, as mx.quantized_matmul(..., transpose=True)."""
    ext = _native()
    if (
        ext is not None
        and w.ndim == 2
        and x.dtype in _FLOATS
        and scales.dtype in _FLOATS
        and ext.supports_quantized(group_size, bits)
    ):
        return ext.quantized_matmul(x, w, scales, biases, group_size, bits)
    return mx.quantized_matmul(
        x, w, scales, biases, transpose=True, group_size=group_size, bits=bits
    )


# Output rows per tile of packed weights (src/kernels.h, kPackRows).
PACK_ROWS = 16


def can_pack(w: mx.array, group_size: int, bits: int) -> bool:
    """Whether quantized weights of this shape and format run packed (pack_quantized)."""
    return (supports(group_size, bits) and w.ndim == 2 and w.shape[0] % PACK_ROWS == 0
            and bits in (2, 4, 8))


def can_pack_dense(w: mx.array) -> bool:
    """Whether a dense weight runs packed (pack_dense)."""
    return (_native() is not None and w.ndim == 2 and w.shape[0] % PACK_ROWS == 0
            and w.dtype in _FLOATS and (w.dtype != mx.bfloat16 or w.shape[1] % 2 == 0))


def _tiles(a: mx.array) -> mx.array:
    """[N, C] -> [N, C] with each tile of PACK_ROWS rows stored column-major."""
    n, c = a.shape
    return a.reshape(n // PACK_ROWS, PACK_ROWS, c).swapaxes(1, 2).reshape(n, c)


def _untiles(a: mx.array) -> mx.array:
    n, c = a.shape
    return a.reshape(n // PACK_ROWS, c, PACK_ROWS).swapaxes(1, 2).reshape(n, c)


def pack_quantized(w: mx.array, scales: mx.array, biases: mx.array) -> tuple[mx.array, ...]:
    """MLX's quantized arrays reordered for the packed kernels: the same bytes and shapes,
    each tile of PACK_ROWS rows interleaved (its uint32 words as [word][row], scales and
    biases as [group][row]), so one vector load brings 16 rows' weights. Lazy; see
    unpack_quantized for the way back."""
    return _tiles(w), _tiles(scales), _tiles(biases)


def unpack_quantized(w: mx.array, scales: mx.array, biases: mx.array) -> tuple[mx.array, ...]:
    """The inverse of pack_quantized: MLX's layout again."""
    return _untiles(w), _untiles(scales), _untiles(biases)


def packed_rows(a: mx.array, rows: mx.array, pairs: bool = False) -> mx.array:
    """Rows of a packed [N, C] array in MLX's layout, [*rows.shape, C] (a packed embedding's
    lookup); `pairs`: a packed bfloat16 weight's layout (pack_dense)."""
    n, c = a.shape
    # Element (r, j) sits at (r // PACK_ROWS) * PACK_ROWS * c + j * PACK_ROWS + r % PACK_ROWS,
    # or with pairs at ... + (j // 2) * 2 * PACK_ROWS + (r % PACK_ROWS) * 2 + j % 2.
    start = (rows // PACK_ROWS) * (PACK_ROWS * c)
    j = mx.arange(c)
    if pairs:
        start, offsets = start + (rows % PACK_ROWS) * 2, (j // 2) * (2 * PACK_ROWS) + j % 2
    else:
        start, offsets = start + rows % PACK_ROWS, j * PACK_ROWS
    return mx.take(a.reshape(-1), start[..., None] + offsets)


def packed_dense_rows(w: mx.array, rows: mx.array) -> mx.array:
    """Rows of a packed dense weight (pack_dense) in MLX's layout."""
    return packed_rows(w, rows, pairs=w.dtype == mx.bfloat16)


def packed_quantized_matmul(x: mx.array, w: mx.array, scales: mx.array, biases: mx.array,
                            group_size: int, bits: int) -> mx.array:
    """quantized_matmul from packed arrays. Where the native kernels do not run (a GPU
    device, MLX_SLM_KERNELS=off) it unpacks them for MLX's op: slower, still correct."""
    ext = _native()
    if ext is not None and x.dtype in _FLOATS and scales.dtype in _FLOATS:
        return ext.quantized_matmul(x, w, scales, biases, group_size, bits, packed=True)
    return mx.quantized_matmul(x, *unpack_quantized(w, scales, biases), transpose=True,
                               group_size=group_size, bits=bits)


def pack_dense(w: mx.array) -> mx.array:
    """A dense [N, K] weight reordered for packed_matmul_t: each tile of PACK_ROWS rows
    stored column-major, bfloat16 ones by pairs of columns ([k / 2][row][2]: a 32-bit lane
    is one row's two elements, what vdpbf16ps multiplies). Lazy."""
    if w.dtype == mx.bfloat16:
        n, k = w.shape
        return w.reshape(n // PACK_ROWS, PACK_ROWS, k // 2, 2).swapaxes(1, 2).reshape(n, k)
    return _tiles(w)


def unpack_dense(w: mx.array) -> mx.array:
    """The inverse of pack_dense."""
    if w.dtype == mx.bfloat16:
        n, k = w.shape
        return w.reshape(n // PACK_ROWS, k // 2, PACK_ROWS, 2).swapaxes(1, 2).reshape(n, k)
    return _untiles(w)


def packed_matmul_t(x: mx.array, w: mx.array) -> mx.array:
    """matmul_t from a packed weight (pack_dense); MLX's op on the unpacked weight where
    the native kernels do not run."""
    ext = _native()
    if ext is not None and x.dtype in _FLOATS and w.dtype in _FLOATS:
        return ext.matmul_t(x, w, packed=True)
    return x @ unpack_dense(w).T


def matmul_t(x: mx.array, w: mx.array) -> mx.array:
    """x @ w.T for a 2-D float32, float16 or bfloat16 w."""
    ext = _native()
    if ext is not None and w.ndim == 2 and x.dtype in _FLOATS and w.dtype in _FLOATS:
        return ext.matmul_t(x, w)
    return x @ w.T


def qk_rope(qkv: mx.array, norm: mx.array | None, cos: mx.array, sin: mx.array, n_q: int,
            n_kv: int, eps: float, scale: float) -> tuple[mx.array, ...] | None:
    """Queries, keys and values for attention from the QKV product's [B, n_q + 2 n_kv, L, hd]
    in one primitive: q/k RMS-normed by `norm`'s rows ([n_q + n_kv, hd], or None), rotated
    half-split by cos/sin ([L, hd/2] or [B, 1, L, hd/2]), queries times `scale`, all float32.
    None where the native kernels do not run (the caller keeps MLX's ops)."""
    ext = _native()
    if ext is None:
        return None
    return tuple(ext.qk_rope(qkv, norm, cos, sin, n_q, n_kv, eps, scale))


def attention(q: mx.array, k: mx.array, v: mx.array, causal: bool,
              mask: mx.array | None = None) -> mx.array | None:
    """Softmax attention for float32 q [B, n_q, L, hd] (pre-scaled) over k, v [B, n_kv, S, hd]
    (grouped-query), each query row computed alone over the keys it sees, in order: a block
    of positions, or a padded batch, is bit-identical to decoding each row alone. `causal`:
    position l sees keys 0 .. S - L + l; `mask`: bool, [S] or [B or 1, 1, L or 1, S], hides
    more. None where the native kernels do not run (the caller keeps MLX's ops)."""
    ext = _native()
    if ext is None or not (q.dtype == k.dtype == v.dtype == mx.float32):
        return None
    if mask is not None:
        if mask.ndim == 1:
            mask = mask.reshape(1, 1, 1, -1)
        if mask.dtype != mx.bool_ or mask.ndim != 4 or mask.shape[1] != 1:
            return None
    return ext.attention(q, k, v, causal, mask)
