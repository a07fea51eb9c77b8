"""Builds the native CPU kernels (mlx_slm/cpu/kernels) on Linux; pyproject.toml holds the
metadata. The extension is optional: if it cannot be built, the install still succeeds and
the package runs on MLX's own ops (mlx_slm.cpu.kernels.status() says why)."""

import subprocess
import sys

from setuptools import setup

KERNELS_MODULE = "mlx_slm.cpu.kernels._ext"
KERNELS_SOURCE = "mlx_slm/cpu/kernels"


def _skip(reason: str) -> None:
    print(f"mlx-slm: native CPU kernels not built ({reason}); MLX's ops will be used.",
          file=sys.stderr)


def _kernel_build() -> dict:
    """setup() arguments that build the kernels, or none where they are not wanted."""
    if not sys.platform.startswith("linux"):
        return {}  # macOS runs Metal with MLX's own kernels
    try:
        from mlx.extension import CMakeBuild, CMakeExtension
    except ImportError as error:
        _skip(f"mlx's build support is missing: {error}")
        return {}

    class OptionalCMakeBuild(CMakeBuild):
        def run(self) -> None:
            try:
                super().run()
            except (subprocess.CalledProcessError, OSError) as error:
                _skip(str(error))

    return {
        "ext_modules": [CMakeExtension(KERNELS_MODULE, sourcedir=KERNELS_SOURCE)],
        "cmdclass": {"build_ext": OptionalCMakeBuild},
    }


setup(**_kernel_build())
