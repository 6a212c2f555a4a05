"""The README and the documentation run as written, and the site builds.

Every fenced block of ``README.md`` and ``docs/*.md`` runs, a page's blocks in order in one
fresh folder (what a reader does), each Python block in a process of its own (so it imports
what it uses), each shell block line by line with bash. The folder holds the files the blocks
name: two JPEGs (``cat.jpg``, ``dog.jpg``), torchvision's ``resnet18-f37072fd.pth`` (random
weights in torchvision's format, also in torch hub's cache as if downloaded) and a small CIFAR-10
ImageFolder (``cifar10-jpeg``). Blocks that load timm's weights by tag reach a Hugging Face hub
on 127.0.0.1 (``HF_ENDPOINT``) serving the files they name.

Three things are not run as written, and the test says so:
- a training command (``python -m train ...`` without ``--config.max_steps``) stops after
  ``MAX_STEPS`` steps: the full runs are what ``python -m bench.runs`` measures;
- the README's two commands: their set-up is checked against ``pyproject.toml``'s extras, the
  test command is CI itself (``.ci/run``), and the main command trains as above;
- a block right after ``<!-- not run: REASON -->`` (a usage synopsis, ImageNet's archives), each
  of which must give its reason.

``mkdocs build --strict`` builds the site from the ``[docs]`` extra, warnings as errors.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_STEPS = 2
_FENCE = re.compile(
    r"^(<!-- not run: (?P<reason>.*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)^```$", re.M | re.S
)
TIMM_TAGS = ("resnet18d.ra2_in1k",)  # every timm tag a block downloads


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """``(language, code, reason it is not run or None)`` of every fenced block of ``page``."""
    return [(m["lang"], m["body"], m["reason"]) for m in _FENCE.finditer(page.read_text())]


def _extras() -> set[str]:
    return set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )


def _command(line: str) -> str | None:
    """The line as the test runs it (None: not run; see the module's docstring)."""
    if line.startswith(("python3 -m venv", ". .venv/bin/activate")):
        return None
    if line.startswith("pip install"):
        wanted = set(re.findall(r"\[([\w,]+)\]", line)[0].split(",")) if "[" in line else set()
        assert wanted <= _extras(), f"{line!r} names extras pyproject.toml lacks"
        return None
    if line.startswith("python -m pytest"):
        return None  # the test command: .ci/run runs it
    words = shlex.split(line)
    if "train" in words and "-m" in words and "train.plot" not in line and "max_steps" not in line:
        return f"{line} --config.max_steps={MAX_STEPS} --config.log_every_steps=1"
    return line


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The files the blocks name, made once: copied into each page's folder."""
    from PIL import Image

    import resnet_flax
    from resnet_flax.io.convert import save_torchvision
    from resnet_flax.models.registry import init_variables

    folder = tmp_path_factory.mktemp("given")
    rng = np.random.default_rng(0)
    for name, size in (("cat.jpg", (320, 240)), ("dog.jpg", (256, 300))):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, quality=90)
    variables = init_variables(resnet_flax.create_model("resnet18"), 32)
    save_torchvision(folder / "resnet18-f37072fd.pth", "resnet18", variables)
    for split, count in (("train", 13), ("val", 3)):
        for label in range(10):
            classes = folder / "cifar10-jpeg" / split / f"class{label}"
            classes.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(classes / f"{i}.jpg")
    return folder


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory) -> dict[str, bytes]:
    """timm's weights for ``TIMM_TAGS``, random, as the hub serves them."""
    import resnet_flax
    from resnet_flax.io.convert import export_torchvision
    from resnet_flax.io.pth import write_safetensors
    from resnet_flax.models.registry import init_variables

    folder = tmp_path_factory.mktemp("hub")
    served = {}
    for tag in TIMM_TAGS:
        name = tag.split(".")[0]
        variables = init_variables(resnet_flax.create_model(name), 32)
        write_safetensors(folder / tag, export_torchvision(name, variables))
        served[f"/timm/{tag}/resolve/main/model.safetensors"] = (folder / tag).read_bytes()
    return served


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_runs_as_written(page, files, hub_files, hugging_face_server, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(files / "resnet18-f37072fd.pth", checkpoints)  # as torch hub downloaded it
    # the checkout first, as in a clone: python -m train, python -m bench
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": path,
        "MPLBACKEND": "Agg",
        # the blocks' processes compile the same small programs: keep every one, not only
        # those over JAX's default second (the session's cache, from conftest)
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    env.pop("XLA_FLAGS", None)
    ran = 0
    with hugging_face_server(hub_files) as endpoint:
        env["HF_ENDPOINT"] = endpoint
        for lang, code, reason in blocks(page):
            if reason is not None:
                assert reason.strip(), f"{page.name}: a block is not run without a reason"
                continue
            if lang == "python":
                commands = [[sys.executable, "-c", code]]
            elif lang == "bash":
                lines = [_command(part.strip()) for line in code.splitlines()
                         for part in line.split("&&")]  # fmt: skip
                commands = [["bash", "-c", line] for line in lines if line]
            else:
                pytest.fail(f"{page.name}: a ```{lang} block: python or bash, or say why not")
            for command in commands:
                shown = command[-1]
                result = subprocess.run(
                    command, cwd=work, env=env, capture_output=True, text=True, timeout=600
                )
                assert result.returncode == 0, (
                    f"{page.name}: this block failed:\n{shown}\n{result.stdout[-3000:]}"
                    f"\n{result.stderr[-3000:]}"
                )
                ran += 1
    # a page with blocks to run ran commands (pip-only blocks are checked, not run)
    assert ran or all(reason is not None for *_, reason in blocks(page)), page.name


def test_the_readme_keeps_its_shape():
    """About 250 lines, the two commands between their markers, and no history."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    for marker in ("main-command", "test-command"):
        assert f"<!-- {marker} -->" in text and f"<!-- /{marker} -->" in text
    for words in ("used to", "before 2026", "as it did here", "this machine", "../shared"):
        assert words not in text, words


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs need the [docs] extra")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    page = (tmp_path / "site" / "models" / "index.html").read_text()
    assert "resnetv2_152x4_bit" in page and "generated:" not in page  # the table is filled in
    assert "resnet_flax.create_model" in (tmp_path / "site" / "api" / "index.html").read_text()
