"""Per-backend XLA compiler settings: the one place the package tunes the compiler.

On the CPU, XLA (jaxlib 0.10) hands convolutions to YNNPACK library fusions by default. For
these networks that is much slower than XLA's own Eigen convolutions: the weight gradient of a
3x3 conv at 32x32x64, batch 128, took 17x longer through YNNPACK, and the whole
``resnet18_cifar`` train step 4x longer (measured side by side on a 2-core CPU).
:func:`jit` compiles with the settings below; pass ``plain=True`` (or use ``jax.jit``) to get
XLA's defaults for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

_OPTIONS: dict[str, dict[str, Any]] = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": ""},  # no YNNPACK library fusions
}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The XLA options this package compiles with on ``backend`` (default: JAX's default)."""
    return dict(_OPTIONS.get(backend or jax.default_backend(), {}))


def jit(fun: Callable, *, plain: bool = False, **kwargs: Any) -> Callable:
    """``jax.jit`` with :func:`compiler_options` (``plain=True``: XLA's defaults)."""
    return jax.jit(fun, compiler_options=None if plain else compiler_options(), **kwargs)
