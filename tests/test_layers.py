"""The layers stay visible and one-way: each package imports only from layers below it.

engine (mlx_slm/*.py, mlx_slm/cpu/) < store < convert < apps < bench < commands and cli.
Every import statement counts, lazy ones inside functions too.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["engine", "store", "convert", "apps", "bench", "shell"]


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("cpu", "data"):
        return "engine"
    if parts[1] in ("store", "convert", "apps", "bench"):
        return parts[1]
    if parts[1] in ("commands", "cli", "__main__"):
        return "shell"
    return "engine"


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in (("mlx_slm", ROOT / "mlx_slm"), ("mlx_slm.convert", ROOT / "convert")):
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            name = ".".join((pkg, *rel.parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
    return {m for m in found if m == "mlx_slm" or m.startswith("mlx_slm.")}


def test_each_layer_imports_only_the_layers_below_it():
    found = modules()
    assert "mlx_slm.model" in found and "mlx_slm.convert.pipeline" in found
    wrong = []
    for name, path in found.items():
        if name == "mlx_slm":
            continue  # the package root exposes the API lazily (apps.api)
        mine = LAYERS.index(layer_of(name))
        for target in imports(name, path):
            if LAYERS.index(layer_of(target)) > mine:
                wrong.append(f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from mlx_slm.apps.chat import ChatSession\n")
    targets = imports("mlx_slm.model", bad)
    assert targets == {"mlx_slm.apps.chat"}
    assert LAYERS.index(layer_of("mlx_slm.apps.chat")) > LAYERS.index(layer_of("mlx_slm.model"))


def test_the_engine_api_imports_without_mlx_until_used():
    import subprocess
    import sys

    code = ("import sys, mlx_slm; assert 'mlx.core' not in sys.modules; "
            "from mlx_slm import load, generate, stream_generate; print(callable(load))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
