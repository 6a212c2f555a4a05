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


# The tests of the models, conversion and inference: they run on the core install and the
# test tools (torch, timm for the references), without the [train] extra.
CORE_TESTS = (
    "conftest", "test_architecture", "test_bridge", "test_convert", "test_fold", "test_hub",
    "test_inference", "test_layers", "test_models", "test_onednn", "test_parity",
    "test_postops", "test_pth", "test_transforms",
)  # fmt: skip
# What only the trainer and its [train] extra bring.
TRAIN_ONLY = (
    "train", "configs", "ml_collections", "grain", "tensorflow_datasets", "cv2",
    "tensorboardX", "sklearn", "matplotlib",
)  # fmt: skip


INSTALLED_TRAINER = ("resnet_flax.train", "resnet_flax.configs")


def _imported_names(path: Path) -> set[str]:
    """The top-level names a test module imports anywhere (functions included), but those
    it asks for with ``pytest.importorskip``."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("resnet_flax."):
            names.add(".".join(node.module.split(".")[:2]))  # resnet_flax.train, if installed
    return names


def test_the_model_tests_need_no_trainer():
    """Read: no core test module imports the trainer or what only [train] brings, in any of
    its functions either (conftest imports the trainer inside the fixture the trainer's tests
    use; its module level is what the collection below checks)."""
    tests = ROOT / "tests"
    bad = {
        module: sorted(_imported_names(tests / f"{module}.py") & {*TRAIN_ONLY, *INSTALLED_TRAINER})
        for module in CORE_TESTS
        if module != "conftest"
    }
    assert not {k: v for k, v in bad.items() if v}


BLOCKER = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name!r} is blocked: not in the core install")
        return None

sys.meta_path.insert(0, Blocker())
"""


def test_the_model_tests_collect_without_the_trainer(tmp_path):
    """Run: pytest collects the core tests (conftest included) with the trainer and the
    [train] extra's packages made unimportable."""
    (tmp_path / "block_train.py").write_text(f"BLOCKED = {TRAIN_ONLY!r}\n{BLOCKER}")
    env = os.environ | {"PYTHONPATH": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    modules = [f"tests/{m}.py" for m in CORE_TESTS if m != "conftest"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "block_train", "--collect-only", "-q", *modules],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " tests collected" in done.stdout or "collected" in done.stdout
