"""Per-backend XLA compiler settings: the one place the package tunes the compiler.

On the CPU, XLA (jaxlib 0.10) hands convolutions and reductions, among others, to YNNPACK
library fusions by default. For these networks its convolutions are much slower than XLA's
own, but its reductions are the fast way to take BatchNorm's channel sums: one read of the
activations with the elementwise work fused in (README, "Performance", has the figures). So
the CPU settings keep YNNPACK for reductions only. :func:`jit` compiles with the settings
below; pass ``plain=True`` (or use ``jax.jit``) to get XLA's defaults for comparison.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

_OPTIONS: dict[str, dict[str, Any]] = {
    # YNNPACK library fusions for reductions only.
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"},
}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
    """The XLA options this package compiles with on ``backend`` (default: JAX's default)."""
    return dict(_OPTIONS.get(backend or jax.default_backend(), {}))


def jit(fun: Callable, *, plain: bool = False, **kwargs: Any) -> Callable:
    """``jax.jit`` with :func:`compiler_options` (``plain=True``: XLA's defaults)."""
    return jax.jit(fun, compiler_options=None if plain else compiler_options(), **kwargs)
