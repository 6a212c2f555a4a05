"""Fixtures and helpers the test modules share (no test module imports another).

- ``tiny_config``: the trainer's smallest real run, as a factory of validated configs;
  ``config_file`` writes one as JSON for a test's subprocess, which reads it back with
  ``ConfigDict(json.loads(text))``.
- ``parity``: torchvision reference models and the parity bound the parity tests apply.
- A persistent JAX compilation cache per session, so a program compiled by one test is not
  compiled again by the next.

The tests run on the CPU whatever the machine has (``JAX_PLATFORMS=cpu`` unless set): the
parity bounds are float32 CPU bounds, and ``impl="cpu"`` needs the CPU backend. The
``accelerator`` tests ask for the accelerator:
``JAX_PLATFORMS=cuda python -m pytest -m accelerator`` (or ``tpu``).
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before JAX is imported

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY_BOUND = 1e-4  # max |ours - torchvision| / max(1, max |torchvision|)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    previous = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    yield
    jax.config.update("jax_compilation_cache_dir", previous)


def make_tiny_config(check: bool = True, **overrides):
    """resnet20 at 16x16 on 128 digits: 4 steps per epoch, 2 epochs, 3 eval batches.

    The trainer is imported here, not at the top, so that the model, conversion and
    inference tests need no more than the core install."""
    from train.config import base_config, validate

    config = base_config()
    config.update(
        name="tiny",
        model="resnet20",
        dataset="digits",
        train_split="train[:128]",
        eval_split="test[:80]",  # 3 eval batches of 32, the last one padded
        image_size=16,
        num_classes=10,
        augment=True,
        num_epochs=2,
        batch_size=32,
        eval_batch_size=32,
        learning_rate=0.05,
        log_every_steps=2,
        keep_checkpoints=2,
        keep_best=1,
    )
    config.update(overrides)
    return validate(config) if check else config


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Any]:
    return make_tiny_config


@pytest.fixture
def config_file(tmp_path) -> Callable[..., Path]:
    """``write(config, name="config.json") -> path``: a config as JSON, for a subprocess."""

    def write(config: Any, name: str = "config.json") -> Path:
        path = tmp_path / name
        path.write_text(config.to_json())
        return path

    return write


@pytest.fixture(scope="session")
def on_devices() -> Callable[..., subprocess.CompletedProcess]:
    """``run(script, *args, devices=8, env=None)``: ``python script args`` in a subprocess whose
    CPU is split into ``devices`` devices (a count JAX fixes when it starts), with the checkout
    importable (``train``), from the checkout's root; fails the test unless it succeeds."""

    def run(script, *args, devices: int = 8, env: dict | None = None):
        environment = (
            os.environ
            | {
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            }
            | (env or {})
        )
        done = subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            env=environment, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return done

    return run


# --------------------------------------------------------------------- torchvision references


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max(1, max |ref|): the quantity the parity bound applies to."""
    return float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))


def torch_model(name: str, seed: int):
    """torchvision's model with random weights and non-trivial BatchNorm state.

    The last BatchNorm of each residual branch gets its weight from U(0.1, 0.3), as trained
    ResNets have (every other BatchNorm: U(0.5, 1.5)), so that float32 resolves the answer to
    the bound: with U(0.5, 1.5) everywhere the residual stream of the 101/152-layer nets grows
    until torch itself, float32 against float64, differs by more than the bound.
    """
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, **model_options(name))
    _randomise_norms(model, seed)
    return model


def timm_model(name: str, seed: int):
    """timm's model with random weights and non-trivial BatchNorm state, drawn as
    :func:`torch_model` draws them (the residual branch's last BatchNorm small)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    _randomise_norms(model, seed)
    return model


def _randomise_norms(model, seed: int) -> None:
    """Random norm weights and BatchNorm statistics (EvoNorm's ``v`` and FRN's ``tau`` too);
    the norm that ends each residual branch small: ``bn2`` of a ``BasicBlock``, ``bn3`` of a
    ``Bottleneck`` (torchvision's and timm's), ``norm3``/``norm2`` of timm's ResNetV2
    ``PreActBottleneck``/``PreActBasic`` (before the branch's last conv), the last conv
    layer's of transformers' ``ResNetBasicLayer``/``ResNetBottleNeckLayer``."""
    import torch

    last = {"BasicBlock": "bn2", "Bottleneck": "bn3", "PreActBottleneck": "norm3",
            "PreActBasic": "norm2"}  # fmt: skip
    residual_last = {
        id(getattr(b, last[type(b).__name__]))
        for b in model.modules()
        if hasattr(b, last.get(type(b).__name__, ""))
    } | {  # transformers' ResNet layers: the last conv layer's norm
        id(b.layer[-1].normalization)
        for b in model.modules()
        if type(b).__name__ in ("ResNetBasicLayer", "ResNetBottleNeckLayer")
    }
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):  # timm's resnet50_gn: no running statistics
                low, high = (0.1, 0.3) if id(m) in residual_last else (0.5, 1.5)
                m.weight.uniform_(low, high, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
            if hasattr(m, "v") or hasattr(m, "tau"):  # timm's EvoNorm-S0, FRN + TLU
                low, high = (0.1, 0.3) if id(m) in residual_last else (0.5, 1.5)
                m.weight.uniform_(low, high, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                extra = m.v if hasattr(m, "v") else m.tau
                extra.uniform_(0.5, 1.5, generator=g) if hasattr(m, "v") else extra.uniform_(
                    -0.5, 0.0, generator=g
                )
            if isinstance(m, torch.nn.BatchNorm2d):
                low, high = (0.1, 0.3) if id(m) in residual_last else (0.5, 1.5)
                m.weight.uniform_(low, high, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(7)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def nchw(x: np.ndarray):
    import torch

    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def model_options(name: str) -> dict:
    """Options on both sides: VGG without dropout, whose masks are random."""
    return {"dropout": 0.0} if name.startswith("vgg") else {}


@pytest.fixture(scope="session")
def parity() -> types.SimpleNamespace:
    """The parity tests' bound, error measure and torchvision reference models."""
    return types.SimpleNamespace(
        BOUND=PARITY_BOUND,
        rel_err=rel_err,
        torch_model=torch_model,
        timm_model=timm_model,
        randomise_norms=_randomise_norms,
        state_dict_numpy=state_dict_numpy,
        nchw=nchw,
        options=model_options,
    )
