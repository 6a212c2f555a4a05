"""The project's layers, as ARCHITECTURE.md draws them: what may import what.

Every import in ``resnet_flax/``, ``train/`` and ``configs/`` (function-level ones included) is
read with ``ast`` and checked against the table below, so a new dependency that breaks a layer
fails here; so does an import cycle between modules. The trainer and its configurations sit at
the top of the checkout and install as ``resnet_flax.train`` and ``resnet_flax.configs``: their
modules import one another relatively, so that each runs under one name.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# part of the project -> its folder; names below are dotted from these parts
PARTS = {"": ROOT / "resnet_flax", "train": ROOT / "train", "configs": ROOT / "configs"}

# layer -> the layers it may import
ALLOWED = {
    "models": {"models"},
    "cpu": {"cpu", "models"},
    "io": {"io", "models"},
    "inference": {"inference", "models", "cpu", "io"},
    "train": {"train", "configs", "models", "cpu", "io", "inference"},
    "configs": {"configs"},
}


def _files() -> dict[str, Path]:
    """Every module of the project by dotted name: ``models.layers``, ``train.loop``,
    ``configs._base``, ``__init__`` for the package itself."""
    found = {}
    for prefix, folder in PARTS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join(p for p in (prefix, *parts) if p)
            found[name.removesuffix(".__init__") or "__init__"] = path
    return found


def _resolve(name: str) -> str | None:
    """A name as imported (``resnet_flax.models.layers``) in the project's dotted names."""
    if name == "resnet_flax":
        return "__init__"
    if name.startswith("resnet_flax."):
        return name.removeprefix("resnet_flax.")
    return name if name.split(".")[0] in ("train", "configs") else None


def _imports(module: str, path: Path) -> set[str]:
    """The project's names that ``path`` (the module ``module``) imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*[p for p in parent if p], *([base] if base else [])])
            else:
                base = _resolve(base) or ""
                if not base:
                    continue
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n}
            continue
        else:
            continue
        found |= {r for r in map(_resolve, names) if r}
    return found


def _module_imports() -> dict[str, set[str]]:
    """module -> the project's modules it imports (a name imported from a package may be a
    submodule or an attribute of it: only the modules count). A module's own packages are
    left out: Python initialises them before it anyway, whatever it imports."""
    files = _files()
    return {
        module: {
            t
            for t in _imports(module, path)
            if t in files and t != module and not module.startswith(t + ".")
        }
        for module, path in files.items()
    }


def _layer(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer):
    graph = _module_imports()
    assert any(_layer(m) == layer for m in graph)
    bad = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _layer(module) == layer
        for target in targets
        if _layer(target) not in ALLOWED[layer]
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """No module imports itself through others, function-level imports included."""
    graph = _module_imports()
    graph.pop("__init__")  # the package's front door imports what it re-exports
    cycles = []

    def visit(module: str, stack: list[str], seen: set[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in stack:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in seen:
                seen.add(target)
                visit(target, [*stack, target], seen)

    for module in sorted(graph):
        visit(module, [module], {module})
    assert not cycles, "\n".join(sorted(set(cycles)))


def test_the_trainer_and_configs_import_their_own_modules_relatively():
    """``from resnet_flax.train...`` inside train/ would import a module a second time, under
    its installed name, when the trainer runs from the checkout as ``train``."""
    bad = []
    for module, path in _files().items():
        if _layer(module) not in ("train", "configs"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                name = node.module or ""
            elif isinstance(node, ast.Import):
                name = node.names[0].name
            else:
                continue
            if name.startswith(("resnet_flax.train", "resnet_flax.configs", "train", "configs")):
                bad.append(f"{module}: import {name}")
    assert not bad, "\n".join(bad)


def test_models_never_import_the_cpu_kernels():
    """The CPU kernels plug in behind the factories; the models only know the factories."""
    graph = _module_imports()
    for module, targets in graph.items():
        if _layer(module) == "models":
            assert not any(_layer(t) == "cpu" for t in targets), module


def test_importing_the_package_loads_no_cpu_kernels_and_no_trainer():
    code = (
        "import sys, resnet_flax; "
        "print([m for m in sys.modules if m.startswith(('resnet_flax.cpu', 'resnet_flax.train',"
        " 'train', 'grain', 'ml_collections', 'tensorflow_datasets'))])"
    )
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_checker_sees_imports():
    """The table is only worth something if the parser finds real imports."""
    files = _files()
    assert {"models.layers", "cpu.onednn"} <= _imports("cpu.kernels", files["cpu.kernels"])
    assert "train.data.registry" in _imports("train.data.load", files["train.data.load"])
    assert "configs._base" in _imports("configs.resnet18_cifar", files["configs.resnet18_cifar"])
