"""The layers stay visible and one-way: each package imports only from layers below it.

base (errors, version) < store < engine (mlx_slm/*.py, mlx_slm/cpu/, mlx_slm/data) < convert
< apps < bench < shell (commands, with cli). Every import statement counts, lazy ones inside
functions too, and a module the layering does not know fails the test until it is placed.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["base", "store", "engine", "convert", "apps", "bench", "shell"]
BASE = {"mlx_slm.errors", "mlx_slm.version"}
# The flat engine's modules by name: a new one is placed here on purpose, not by default.
ENGINE = {"adapters", "backend", "batch_cache", "batch_generation", "cache", "chat_format",
          "chooser", "constrain", "draft_policy", "generation", "loader", "lora", "memory",
          "model", "prefix_cache", "progress", "quant", "recipes", "sample", "sizes",
          "speculative", "synthetic", "tokenizer", "training", "weights"}
PACKAGES = {"cpu": "engine", "data": "engine", "store": "store", "convert": "convert",
            "apps": "apps", "bench": "bench", "commands": "shell"}


def layer_of(module: str) -> str:
    """The layer of an mlx_slm module; raises for one the layering does not know."""
    parts = module.split(".")
    if module in BASE:
        return "base"
    if len(parts) == 1 or module == "mlx_slm.__main__":
        return "shell"  # the package root and `python -m` start the CLI or the lazy API
    if parts[1] in PACKAGES:
        return PACKAGES[parts[1]]
    if len(parts) == 2 and parts[1] in ENGINE:
        return "engine"
    raise KeyError(f"{module} is in no layer: add it to tests/test_layers.py")


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in (("mlx_slm", ROOT / "mlx_slm"), ("mlx_slm.convert", ROOT / "convert")):
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            name = ".".join((pkg, *rel.parts)).removesuffix(".__init__")
            found[name] = path
    return found


KNOWN = set(modules())


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
            # `from mlx_slm import memory` imports the module mlx_slm.memory.
            submodules = {f"{base}.{a.name}" for a in node.names} & KNOWN
            found |= submodules or {base}
    return {m for m in found if m == "mlx_slm" or m.startswith("mlx_slm.")}


def test_every_module_has_a_layer():
    unknown = []
    for name in modules():
        try:
            layer_of(name)
        except KeyError as err:
            unknown.append(str(err))
    assert not unknown, "\n".join(unknown)


def test_an_unknown_module_is_refused():
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("mlx_slm.newthing")
    with pytest.raises(KeyError, match="in no layer"):
        layer_of("mlx_slm.newpackage.module")


def test_each_layer_imports_only_the_layers_below_it():
    found = modules()
    assert "mlx_slm.model" in found and "mlx_slm.convert.pipeline" in found
    wrong = []
    for name, path in found.items():
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
