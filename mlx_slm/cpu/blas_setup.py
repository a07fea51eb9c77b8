"""`python -m mlx_slm.cpu.blas_setup`: give MLX's Linux CPU backend an optimized BLAS.

Installs Debian/Ubuntu's OpenBLAS where that needs no password (root, or passwordless
sudo), else prints the one command to run. Does nothing on macOS (Accelerate) or when an
optimized BLAS already serves MLX.
"""

import os
import shutil
import subprocess
import sys

PACKAGE = "libopenblas0-pthread"


def _blas_in_fresh_process() -> str:
    """Which BLAS serves MLX in a new interpreter (this one may predate the install)."""
    code = ("import mlx_slm, mlx.core; from mlx_slm.cpu.blas import blas_in_use; "
            "print(blas_in_use())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _install_command() -> list[str] | None:
    """apt-get as root, or through passwordless sudo; None if neither is possible."""
    if not shutil.which("apt-get"):
        return None
    apt = ["apt-get", "install", "-y", "-q", PACKAGE]
    if os.geteuid() == 0:
        return apt
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n", *apt]
    return None


def main() -> int:
    if not sys.platform.startswith("linux"):
        return 0
    if os.environ.get("MLX_SLM_BLAS", "").lower() == "off":
        print("mlx-slm: MLX_SLM_BLAS=off, leaving MLX on its reference BLAS.")
        return 0
    current = _blas_in_fresh_process()
    if current != "reference":
        print(f"mlx-slm: MLX's CPU backend uses {current}.")
        return 0
    command = _install_command()
    if command is None:
        print(f"mlx-slm: MLX is on the slow reference BLAS. Run: sudo apt-get install {PACKAGE}"
              "  (other systems: install OpenBLAS, or `pip install mkl`).")
        return 0
    print(f"mlx-slm: installing {PACKAGE} for fast float32 matmuls: {' '.join(command)}")
    update = command[: command.index("apt-get")] + ["apt-get", "update", "-q"]
    subprocess.run(update, capture_output=True)
    if subprocess.run(command, capture_output=True).returncode != 0:
        print(f"mlx-slm: could not install {PACKAGE}; run: sudo apt-get install {PACKAGE}")
        return 0
    print(f"mlx-slm: MLX's CPU backend now uses {_blas_in_fresh_process()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
