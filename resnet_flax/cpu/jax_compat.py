"""What the CPU kernels need from JAX beyond its public API, and what differs between the
releases they run on (``pyproject.toml`` names the range), in one place:

- how an abstract value says which ``shard_map`` mesh axes it varies over (jax 0.9 calls it
  ``vma``, a frozenset of axis names; from 0.10 it is ``manual_axis_type``, whose ``varying``
  holds the names);
- the table of linearisation rules that reverse-mode differentiation reads, apart from the
  JVP rules forward mode reads (:mod:`resnet_flax.cpu.guard` gives its primitives one of
  each);
- what a lowering rule's context says: lowering for ``jax.export``, and over how many
  devices XLA's automatic partitioner will split the program.
"""

from __future__ import annotations

import math
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


def register_linearization(primitive: Any, rule: Any) -> None:
    """Make ``rule`` how reverse-mode differentiation (``jax.grad``, ``jax.vjp``: JAX's direct
    linearisation) takes ``primitive``, apart from its JVP rule, which forward mode uses."""
    from jax._src.interpreters import ad  # not public: the table of linearisation rules

    ad.primitive_linearizations[primitive] = rule


def lowering_for_export(ctx: Any) -> bool:
    """Whether a lowering rule's context lowers for ``jax.export``."""
    return bool(getattr(ctx.module_context.lowering_parameters, "for_export", False))


def auto_partitioned_devices(ctx: Any) -> int:
    """Over how many devices XLA's automatic partitioner splits the program a lowering rule's
    context belongs to: ``jax.jit`` over several devices, or the automatic axes left around a
    partly manual ``shard_map``; 1 for one device or a fully manual ``shard_map``."""
    context = ctx.module_context.axis_context
    if hasattr(context, "num_devices"):  # ShardingContext: jit's automatic partitioning
        return int(context.num_devices)
    mesh, manual = getattr(context, "mesh", None), getattr(context, "manual_axes", frozenset())
    if mesh is None:
        return 1
    return int(math.prod(size for name, size in mesh.shape.items() if name not in manual))
