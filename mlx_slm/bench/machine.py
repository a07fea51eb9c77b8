"""What produced a number: backend, BLAS, versions, platform, CPU, cores, memory, load
average, date."""

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

from mlx_slm.memory import total_ram_bytes


def cpu_brand() -> str:
    """The CPU's marketing name ('Apple M2 Pro', 'AMD EPYC 7B13'), or the architecture."""
    if sys.platform == "darwin":
        try:
            done = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    elif sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


# Above this 1-minute load average other work shares the cores, and figures are noise.
QUIET_LOAD = 0.5


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS will not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def load_warning(load: float | None) -> str | None:
    """A warning when the load average says other work is running, else None."""
    if load is None or load <= QUIET_LOAD:
        return None
    return (f"load average {load:.2f} > {QUIET_LOAD}: other work is running, so these "
            "figures are noisy; measure on a quiet machine")


def machine_fingerprint() -> str:
    """A key that changes when the hardware does (a cached measurement is per machine)."""
    return f"{cpu_brand()} | {os.cpu_count()} cores | {total_ram_bytes()} bytes"


def machine_info() -> dict:
    """The fields every benchmark row records about where it ran."""
    import mlx.core as mx

    from mlx_slm.cpu.report import runtime_report
    from mlx_slm.version import __version__

    return {
        **runtime_report(),
        "mlx_version": mx.__version__,
        "mlx_slm_version": __version__,
        "platform": platform.platform(),
        "cpu": cpu_brand(),
        "cores": os.cpu_count(),
        "ram_bytes": total_ram_bytes(),
        "load_average": load_average(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
