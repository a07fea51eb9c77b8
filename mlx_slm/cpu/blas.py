"""Put an optimized BLAS under MLX's CPU backend on Linux.

The Linux `mlx[cpu]` wheel links the unoptimized netlib reference BLAS. A library that
exports the standard CBLAS names, loaded with RTLD_GLOBAL before `mlx.core`, takes
precedence in the dynamic linker's lookup, so MLX's float32 matmuls run 20-100x faster.
This module must not import mlx: it runs before it.
"""

import ctypes
import ctypes.util
import glob
import os
import sys

ENV_VAR = "MLX_SLM_BLAS"
FIX_HINT = (
    "sudo apt-get install libopenblas0-pthread  (or: pip install mkl and "
    f"{ENV_VAR}=mkl; or {ENV_VAR}=/path/to/libopenblas.so)"
)
# The symbols MLX's CPU backend calls; a library lacking them cannot interpose.
_REQUIRED_SYMBOLS = ("cblas_sgemm", "sgemm_")
_SYSTEM_OPENBLAS = (
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

_loaded: list[ctypes.CDLL] = []  # keep handles alive for the life of the process
_warned = False


def _warn(message: str) -> None:
    global _warned
    if not _warned and os.environ.get("MLX_SLM_QUIET_BLAS") != "1":
        print(f"mlx-slm: {message}", file=sys.stderr)
    _warned = True


def _mkl_candidates() -> list[str]:
    """libmkl_rt from the `mkl` wheel, which installs into <prefix>/lib."""
    found = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    return found


def _try_load(path: str) -> str | None:
    """Load `path` globally if it exports the CBLAS names; return why not, else None."""
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        return str(err).splitlines()[0]
    missing = [name for name in _REQUIRED_SYMBOLS if not hasattr(lib, name)]
    if missing:
        return f"it does not export {', '.join(missing)}"
    _loaded.append(lib)
    return None


def preload() -> None:
    """Load the best available BLAS before mlx.core; a no-op off Linux or when disabled."""
    if not sys.platform.startswith("linux"):
        return
    choice = os.environ.get(ENV_VAR, "").strip()
    if choice.lower() == "off":
        return
    if "mlx.core" in sys.modules:
        if not _loaded:
            _warn(
                "mlx.core was imported before mlx_slm, so the optimized BLAS could not be "
                "put under it; import mlx_slm first for fast float32 matmuls."
            )
        return
    if _loaded:
        return
    if choice:
        # Keywords name a family; anything else is a library path or soname.
        candidates = {"openblas": _SYSTEM_OPENBLAS, "mkl": tuple(_mkl_candidates())}.get(
            choice.lower(), (choice,))
        reasons = []
        for candidate in candidates:
            why = _try_load(candidate)
            if why is None:
                return
            reasons.append(why)
        why = reasons[0] if reasons else "not installed"
        _warn(f"{ENV_VAR}={choice} cannot be used ({why}); using MLX's reference BLAS.")
        return
    for candidate in (*_SYSTEM_OPENBLAS, *_mkl_candidates()):
        if _try_load(candidate) is None:
            return


def _dladdr_path(address: int) -> str | None:
    class DlInfo(ctypes.Structure):
        _fields_ = [
            ("dli_fname", ctypes.c_char_p),
            ("dli_fbase", ctypes.c_void_p),
            ("dli_sname", ctypes.c_char_p),
            ("dli_saddr", ctypes.c_void_p),
        ]

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    info = DlInfo()
    if libc.dladdr(ctypes.c_void_p(address), ctypes.byref(info)) == 0 or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())


def blas_in_use() -> str:
    """Name of the BLAS that serves MLX's matmuls, read from the process's loaded libraries.

    The dynamic linker binds libmlx's `cblas_sgemm` to the first definition in the global
    scope, and falls back to the bundled reference BLAS when the global scope has none.
    """
    if sys.platform == "darwin":
        return "accelerate"
    try:
        default = ctypes.CDLL(None)
        address = ctypes.cast(default.cblas_sgemm, ctypes.c_void_p).value
    except (AttributeError, OSError):
        return "reference"
    path = _dladdr_path(address) if address else None
    if path is None:
        return "reference"
    name = os.path.basename(path)
    if "openblas" in name:
        return f"openblas ({path})"
    if "mkl" in name:
        return f"mkl ({path})"
    if "libblas-" in name or "mlx" in path:
        return "reference"
    return f"other ({path})"
