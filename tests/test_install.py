"""The package as users install it: a wheel, in a fresh virtual environment, run from outside
the checkout. The core install first (models, converters, inference), then the [train] extra.

Then the project installed with ``--no-deps`` next to a JAX that is already there, the
oldest releases ``pyproject.toml`` admits (the newest are what the test command installs).

Slow (pip installs, from PyPI or pip's cache), so marked ``slow``; CI runs it. pip installs
with ``--no-compile``: Python compiles what a run imports, not every file of every package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what only the [train] extra (or torch) brings; optax and orbax come with flax itself
TRAIN_ONLY = ("tensorflow_datasets", "grain", "cv2", "sklearn", "matplotlib", "tensorboardX",
              "ml_collections", "torch", "onednn")  # fmt: skip

ROUND_TRIP = textwrap.dedent(
    """
    import sys, jax, numpy as np, resnet_flax
    model = resnet_flax.create_model("resnet18", num_classes=10)
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    resnet_flax.save_torchvision("r18.safetensors", "resnet18", variables)
    back, loaded = resnet_flax.load_torchvision("resnet18", "r18.safetensors")
    assert back.num_classes == 10
    a = model.apply(variables, x, train=False)
    b = back.apply(loaded, x, train=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "resnet50.a1_in1k" in resnet_flax.list_pretrained()  # the timm table's data file
    # the CPU kernels load when first asked for, and agree (float32 round-off, measured 1.2e-6)
    assert not [m for m in sys.modules if m.startswith("resnet_flax.cpu")]
    cpu = resnet_flax.create_model("resnet18", num_classes=10, impl="cpu")
    c = cpu.apply(variables, x, train=False)
    assert "resnet_flax.cpu.kernels" in sys.modules
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=0, atol=1e-5)
    print("round trip ok")
    """
)


# The oldest releases pyproject.toml admits, with the [train] extra's other packages.
OLDEST = ["jax==0.9.2", "jaxlib==0.9.2", "flax==0.12.6", "optax==0.2.8", "orbax-checkpoint==0.12.8"]
TRAIN_REST = ["ml_collections", "tensorflow-datasets", "importlib_resources", "grain",
              "opencv-python-headless", "scikit-learn", "tensorboardX", "matplotlib",
              "safetensors", "pillow", "tqdm"]  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once for the module's tests."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], ROOT)
    (built,) = dist.glob("resnet_flax-*.whl")
    return built


def run(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))}\n{done.stdout[-2000:]}\n" + (done.stderr[-4000:])
    )
    return done


@pytest.mark.slow
def test_the_wheel_works_outside_the_checkout(tmp_path, wheel):
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.startswith("resnet_flax-")}
    assert top_level == {"resnet_flax"}, "no generic top-level names in site-packages"
    for shipped in ("resnet_flax/train/data/stream.py", "resnet_flax/configs/_base.py",
                    "resnet_flax/inference/imagenet_classes.txt",
                    "resnet_flax/io/weights.csv"):  # fmt: skip
        assert shipped in names

    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-compile"]
    run([*pip, str(wheel)], work, timeout=1200)
    run([str(python), "-c", ROUND_TRIP], work)
    assert (
        "usage: python -m resnet_flax.predict"
        in run([str(python), "-m", "resnet_flax.predict", "--help"], work).stdout
    )
    assert "usage:" in run([str(venv / "bin" / "resnet-flax-predict"), "--help"], work).stdout
    installed = run([str(python), "-m", "pip", "list", "--format=freeze"], work).stdout.lower()
    probe = f"import importlib.util as u; print([m for m in {TRAIN_ONLY!r} if u.find_spec(m)])"
    assert run([str(python), "-c", probe], work).stdout.strip() == "[]", installed
    missing = subprocess.run(
        [str(python), "-m", "resnet_flax.train", "--config", "resnet20_digits"],
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode != 0 and "pip install 'resnet-flax[train]'" in missing.stderr

    run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[train]"],
        work,
        timeout=1200,
    )
    trained = run(
        [str(venv / "bin" / "resnet-flax-train"), "--config", "resnet20_digits",
         "--config.max_steps=2", "--workdir", str(work / "run")],
        work, timeout=900,
    )  # fmt: skip
    assert '"step": 2' in trained.stdout and (work / "run" / "metrics.jsonl").is_file()
    prepare = subprocess.run(
        [str(venv / "bin" / "resnet-flax-prepare"), "--data_dir", str(work / "imagenet")],
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    assert prepare.returncode == 2, prepare.stderr  # no archives: says where they go, and how
    assert "python -m resnet_flax.train.prepare --data_dir" in prepare.stderr


@pytest.mark.slow
def test_no_deps_install_next_to_the_oldest_supported_jax(tmp_path, wheel):
    """A machine that has JAX already (as the lent GPU machine, which has no network):
    ``pip install --no-deps`` of the project gives a working trainer on what is there."""
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", *OLDEST, *TRAIN_REST],
        work,
        timeout=1200,
    )
    run([str(python), "-m", "pip", "install", "-q", "--no-compile", "--no-deps", str(wheel)], work)
    versions = "import jax, flax; print(jax.__version__, flax.__version__)"
    versions = run([str(python), "-c", versions], work).stdout.split()
    assert versions == ["0.9.2", "0.12.6"]
    run([str(python), "-c", ROUND_TRIP], work)
    trained = run(
        [str(venv / "bin" / "resnet-flax-train"), "--config", "resnet20_digits",
         "--config.max_steps=2", "--workdir", str(work / "run")],
        work, timeout=900,
    )  # fmt: skip
    assert '"step": 2' in trained.stdout
