"""The optimized BLAS really serves MLX's matmul on Linux, and failures degrade gracefully."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only path")

MATMUL = (
    "import mlx_slm, mlx.core as mx; from mlx_slm.cpu.blas import blas_in_use; "
    "a = mx.arange(64 * 48, dtype=mx.float32).reshape(64, 48) / 100; "
    "b = mx.cos(mx.arange(48 * 32, dtype=mx.float32).reshape(48, 32)); "
    "import numpy as np; np.save('{out}', np.array(a @ b)); print(blas_in_use())"
)


def run(code, env=None, **kwargs):
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLX_SLM_BLAS", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=full_env, timeout=120, **kwargs)


def openblas_loadable() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libopenblas.so.0")
    except OSError:
        return False
    return True


def test_system_openblas_binds_mlx_sgemm(tmp_path):
    """The dynamic linker's own record: libmlx's cblas_sgemm binds to the library we chose."""
    done = run(MATMUL.format(out=tmp_path / "x.npy"), env={"LD_DEBUG": "bindings"})
    assert done.returncode == 0, done.stderr[-2000:]
    bindings = [line for line in done.stderr.splitlines()
                if "libmlx" in line and "`cblas_sgemm'" in line]
    assert bindings, "MLX never bound cblas_sgemm"
    reported = done.stdout.strip().splitlines()[-1]
    if openblas_loadable():
        assert all("openblas" in line for line in bindings), bindings
        assert reported.startswith("openblas")
    else:
        assert all("libblas-" in line for line in bindings), bindings
        assert reported == "reference"


def test_off_gives_the_reference_blas_and_identical_numerics(tmp_path):
    fast = run(MATMUL.format(out=tmp_path / "fast.npy"))
    slow = run(MATMUL.format(out=tmp_path / "slow.npy"), env={"MLX_SLM_BLAS": "off"})
    assert slow.returncode == 0 and fast.returncode == 0
    assert slow.stdout.strip() == "reference"
    np.testing.assert_allclose(np.load(tmp_path / "fast.npy"), np.load(tmp_path / "slow.npy"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", ["/nonexistent/libopenblas.so", "/etc/hostname"])
def test_bogus_path_warns_once_and_falls_back(tmp_path, value):
    done = run(MATMUL.format(out=tmp_path / "x.npy"), env={"MLX_SLM_BLAS": value})
    assert done.returncode == 0
    assert done.stdout.strip() == "reference"
    warnings = [line for line in done.stderr.splitlines() if "MLX_SLM_BLAS" in line]
    assert len(warnings) == 1 and value in warnings[0] and "reference BLAS" in warnings[0]
    assert "Traceback" not in done.stderr


def test_keyword_for_a_family_that_is_not_installed(tmp_path):
    done = run(MATMUL.format(out=tmp_path / "x.npy"), env={"MLX_SLM_BLAS": "mkl"})
    if "mkl" in done.stdout:  # the mkl wheel is installed here: it must then serve MLX
        assert done.stdout.strip().startswith("mkl (")
    else:
        assert done.stdout.strip() == "reference"
        assert "MLX_SLM_BLAS=mkl cannot be used (not installed)" in done.stderr


def test_library_without_cblas_names_is_refused(tmp_path):
    libm = "libm.so.6"
    done = run(MATMUL.format(out=tmp_path / "x.npy"), env={"MLX_SLM_BLAS": libm})
    assert done.stdout.strip() == "reference"
    assert "does not export cblas_sgemm" in done.stderr


def test_mlx_imported_first_is_reported_not_raised(tmp_path):
    code = "import mlx.core; " + MATMUL.format(out=tmp_path / "x.npy")
    done = run(code)
    assert done.returncode == 0
    assert "mlx.core was imported before mlx_slm" in done.stderr
    assert done.stdout.strip() == "reference"


def test_generate_json_reports_blas(model_dir):
    done = run(
        "import sys; from mlx_slm.commands.cli import main; "
        f"sys.argv = ['mlx-slm', 'generate', '-m', '{model_dir}', '-n', '2', '--json']; main()"
    )
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    assert report["blas"].startswith("openblas" if openblas_loadable() else "reference")
