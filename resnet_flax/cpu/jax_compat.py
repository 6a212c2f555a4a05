"""What differs between the JAX releases the CPU kernels run on (``pyproject.toml`` names the
range): how an abstract value says which ``shard_map`` mesh axes it varies over.

jax 0.9 calls it ``vma`` (a frozenset of axis names); from 0.10 it is ``manual_axis_type``,
whose ``varying`` holds the names.
"""

from __future__ import annotations

from typing import Any

import jax


def varying_axes(x: jax.Array) -> frozenset:
    """The manual mesh axes ``x`` varies over inside ``shard_map`` (empty outside)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "manual_axis_type", None)
    if manual is not None:
        return frozenset(getattr(manual, "varying", ()))
    return frozenset(getattr(aval, "vma", ()))


def result_like(x: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    """An FFI result of ``shape`` and ``dtype`` that varies over the mesh axes ``x`` does."""
    aval = jax.typeof(x)
    if hasattr(aval, "manual_axis_type"):
        typing = {"manual_axis_type": aval.manual_axis_type}
    elif hasattr(aval, "vma"):
        typing = {"vma": aval.vma}
    else:
        typing = {}
    return jax.ShapeDtypeStruct(shape, dtype, sharding=aval.sharding, **typing)
