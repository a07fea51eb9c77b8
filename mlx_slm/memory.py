"""Memory figures: MLX's allocator peak, the process's resident set, the macOS footprint."""

import ctypes
import resource
import sys

import mlx.core as mx

GB = 1e9  # every GB this package prints is 10^9 bytes



def mlx_peak_bytes() -> int:
    return mx.get_peak_memory()


def reset_mlx_peak() -> None:
    mx.reset_peak_memory()


def proc_kib(path: str, key: str) -> int | None:
    """Bytes of a `key:  N kB` line of a Linux /proc file; None elsewhere or if absent."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """The process's peak resident set.

    Linux: VmHWM, which `/proc/self/clear_refs` can restart (ru_maxrss keeps the old peak
    once any thread has exited). Elsewhere ru_maxrss (bytes on macOS).
    """
    peak = proc_kib("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
    """The process's resident set now (Linux: /proc; macOS: the task's resident size)."""
    if sys.platform.startswith("linux"):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    info = _darwin_rusage()
    return info.ri_resident_size if info else None


def physical_footprint_bytes() -> int | None:
    """macOS only: the physical footprint, the figure Activity Monitor shows as Memory."""
    info = _darwin_rusage()
    return info.ri_phys_footprint if info else None


class _RusageInfoV0(ctypes.Structure):
    _fields_ = [
        ("ri_uuid", ctypes.c_uint8 * 16),
        ("ri_user_time", ctypes.c_uint64),
        ("ri_system_time", ctypes.c_uint64),
        ("ri_pkg_idle_wkups", ctypes.c_uint64),
        ("ri_interrupt_wkups", ctypes.c_uint64),
        ("ri_pageins", ctypes.c_uint64),
        ("ri_wired_size", ctypes.c_uint64),
        ("ri_resident_size", ctypes.c_uint64),
        ("ri_phys_footprint", ctypes.c_uint64),
        ("ri_proc_start_abstime", ctypes.c_uint64),
        ("ri_proc_exit_abstime", ctypes.c_uint64),
    ]


def _darwin_rusage() -> _RusageInfoV0 | None:
    if sys.platform != "darwin":
        return None
    import os

    try:
        libproc = ctypes.CDLL("/usr/lib/libproc.dylib")
    except OSError:
        return None
    info = _RusageInfoV0()
    # proc_pid_rusage(pid, RUSAGE_INFO_V0, &info) returns 0 on success.
    if libproc.proc_pid_rusage(os.getpid(), 0, ctypes.byref(info)) != 0:
        return None
    return info


def memory_report() -> dict:
    """MLX's allocator peak, the process's peak RSS and (macOS) the physical footprint now,
    in GB. The names follow the JSON vocabulary of docs/generate.md: `peak_` for a peak, no
    prefix for a reading at that moment."""
    report = {
        "peak_memory_gb": mlx_peak_bytes() / GB,
        "peak_rss_gb": peak_rss_bytes() / GB,
    }
    footprint = physical_footprint_bytes()
    if footprint is not None:
        report["footprint_gb"] = footprint / GB
    return report


def restart_peak_rss() -> str:
    """Restart the process's peak-RSS count where the OS allows it (Linux); returns the scope
    the next reading covers: 'cell', or 'process' (the peak since the process began)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "cell"
    except OSError:
        return "process"


def available_bytes() -> int | None:
    """Memory available to a new allocation: MemAvailable on Linux, physical RAM on macOS."""
    if sys.platform.startswith("linux"):
        return proc_kib("/proc/meminfo", "MemAvailable")
    return total_ram_bytes()


def total_ram_bytes() -> int | None:
    """Physical memory in bytes, or None where the OS will not say."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
