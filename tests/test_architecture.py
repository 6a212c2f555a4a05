"""The package's layers, as ARCHITECTURE.md draws them: what may import what.

Every import in ``resnet_flax/`` (function-level ones included) is read with ``ast`` and
checked against the table below, so a new dependency that breaks a layer fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "resnet_flax"

# layer -> the parts of the package it may import (a part is a subpackage or one module)
ALLOWED = {
    "models": {"models"},
    "cpu": {"cpu", "models"},
    "io": {"io", "models", "inference.preprocess"},
    "inference": {"inference", "models", "cpu", "io"},
    "train": {"train", "models", "cpu", "io", "inference"},
}


def _imports(path: Path) -> set[str]:
    """The ``resnet_flax`` modules ``path`` imports, as dotted names below the package."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n.removeprefix("resnet_flax.") for n in names if n.startswith("resnet_flax.")}
    return found


def _modules() -> set[str]:
    """Every module and package below ``resnet_flax``, dotted. A name imported from a package
    may be a submodule or an attribute of it: only the modules are judged."""
    paths = [p.with_suffix("") for p in PACKAGE.rglob("*.py")]
    paths += [p for p in PACKAGE.rglob("*") if p.is_dir()]
    return {".".join(p.relative_to(PACKAGE).parts) for p in paths}


def _allowed(target: str, parts: set[str]) -> bool:
    return any(target == part or target.startswith(part + ".") for part in parts)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_what_it_may(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    known = _modules()
    bad = [
        f"{path.relative_to(PACKAGE)} imports resnet_flax.{target}"
        for path in files
        for target in _imports(path)
        if target in known and not _allowed(target.removesuffix(".__init__"), ALLOWED[layer])
    ]
    assert not bad, "\n".join(bad)


def test_models_never_import_the_cpu_kernels():
    """The CPU kernels plug in behind the factories; the models only know the factories."""
    for path in (PACKAGE / "models").rglob("*.py"):
        assert not any(t.startswith("cpu") for t in _imports(path)), path
    assert "cpu" in _imports(PACKAGE / "__init__.py")  # the package wires them in


def test_the_checker_sees_imports():
    """The table is only worth something if the parser finds real imports."""
    assert {"models.layers", "cpu.onednn"} <= _imports(PACKAGE / "cpu" / "kernels.py")
    assert "train.data.registry" in _imports(PACKAGE / "train" / "data" / "load.py")
