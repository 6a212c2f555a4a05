"""Each convolution's bias, residual sum and ReLU run by the convolution itself, at inference.

With BatchNorm folded (:mod:`resnet_flax.inference.fold`) a ResNet's eval forward is, conv
after conv, ``relu(conv(x) + bias)``, and at each block's end ``relu(conv(x) + bias +
shortcut)``. XLA runs
every such tail as one more pass over the conv's output in memory. oneDNN can apply it to each
block of the output while that block is still in registers (post-ops), adding the shortcut in
place, which also leaves the program one activation-sized buffer fewer per block.

:func:`fuse_post_ops` traces a function, finds each oneDNN forward convolution (a
:func:`resnet_flax.cpu.onednn.conv_general_dilated` call) whose output feeds only a per-channel bias
add, that add's output only a residual add and/or a ReLU, and runs the chain as one
:func:`resnet_flax.cpu.onednn.forward_with_post_ops` call. Everything else runs as traced. The
float32 operations and their order are unchanged, so the results are the same to the bit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.extend.core import ClosedJaxpr, Jaxpr, JaxprEqn, Literal, Var

from resnet_flax.cpu import guard, onednn


@dataclass(frozen=True)
class Fusion:
    """One conv and its tail, run as a single call in place of the eqns it spans."""

    x: Var
    w: Var
    geometry: tuple[int, ...]
    bias: Var
    residual: Var | None
    relu: bool
    eqns: tuple[int, ...]  # indices of the conv, bias add, [residual add], [ReLU]


def fuse_post_ops(fn: Callable) -> Callable:
    """``fn`` with every oneDNN conv -> bias [-> residual add] [-> ReLU] chain as one call.

    The result traces ``fn`` each time it is traced itself: call it under ``jax.jit``.
    """

    def fused(*args: Any) -> Any:
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = evaluate(closed, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(shapes), outs)

    return fused


def evaluate(closed: ClosedJaxpr, args: Sequence[Any]) -> list[Any]:
    """Run ``closed`` on ``args`` with its conv chains (:func:`plan`) fused."""
    jaxpr = closed.jaxpr
    fusions = {f.eqns[-1]: f for f in plan(jaxpr)}
    replaced = {i for f in fusions.values() for i in f.eqns[:-1]}
    env: dict[Var, Any] = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    env |= dict(zip(jaxpr.invars, args, strict=True))

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for i, eqn in enumerate(jaxpr.eqns):
        if i in replaced:
            continue
        if i in fusions:
            f = fusions[i]
            residual = None if f.residual is None else env[f.residual]
            out = onednn.forward_with_post_ops(
                f.geometry, read(f.x), read(f.w), read(f.bias), residual, f.relu
            )
            outs = [out]
        else:
            params = eqn.primitive.get_bind_params(eqn.params)  # as jax.core.eval_jaxpr does
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*map(read, eqn.invars), **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env |= dict(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def plan(jaxpr: Jaxpr) -> list[Fusion]:
    """The conv chains of ``jaxpr`` that can run as one call, in program order.

    A link joins the chain only when the value before it has no other use. Where a residual add
    sums two conv chains (a block's last conv and its projection shortcut), the earlier conv
    takes the add and the other chain ends at its bias.
    """
    eqns = jaxpr.eqns
    producer = {v: i for i, eqn in enumerate(eqns) for v in eqn.outvars}
    consumers: dict[Var, list[int]] = defaultdict(list)
    for i, eqn in enumerate(eqns):
        for v in eqn.invars:
            if isinstance(v, Var):
                consumers[v].append(i)
    for v in jaxpr.outvars:
        if isinstance(v, Var):
            consumers[v].append(-1)  # a result of the program: must be materialised
    taken: set[int] = set()

    def sole_consumer(v: Var) -> int | None:
        users = consumers[v]
        return users[0] if len(users) == 1 and users[0] >= 0 and users[0] not in taken else None

    fusions = []
    for i, eqn in enumerate(eqns):
        conv = _conv(eqn)
        if conv is None:
            continue
        value = eqn.outvars[0]
        j = sole_consumer(value)
        bias = None if j is None else _bias(eqns[j], value, eqns, producer)
        if bias is None:
            continue
        chain, value, residual, relu = [i, j], eqns[j].outvars[0], None, False
        k = sole_consumer(value)
        if k is not None and (residual := _other_addend(eqns[k], value)) is not None:
            chain.append(k)
            value = eqns[k].outvars[0]
            k = sole_consumer(value)
        if k is not None and _is_relu(eqns[k]):
            chain.append(k)
            relu = True
        taken.update(chain)
        fusions.append(Fusion(*conv, bias, residual, relu, tuple(chain)))
    return fusions


def _conv(eqn: JaxprEqn) -> tuple[Var, Var, tuple[int, ...]] | None:
    """``(x, w, geometry)`` if ``eqn`` is a oneDNN forward conv without post-ops."""
    if eqn.primitive.name != "custom_vjp_call":
        return None
    inner = eqn.params["call_jaxpr"].jaxpr
    if not inner.eqns or len(inner.invars) != 2 or len(eqn.invars) != 2:
        return None
    *marks, call = inner.eqns  # the FFI call, its operands marked (guard.ffi_operand)
    if call.primitive.name != "ffi_call" or call.params["target_name"] != onednn.target("fwd"):
        return None
    if any(m.primitive.name != guard.FFI_OPERAND for m in marks):
        return None
    source = {m.outvars[0]: m.invars[0] for m in marks}
    if [source.get(v, v) for v in call.invars] != list(inner.invars):
        return None
    if call.outvars != inner.outvars:
        return None
    attribute = dict(call.params["attributes"])["geometry"]  # a jax.ffi HashableArray
    geometry = tuple(int(v) for v in getattr(attribute, "val", attribute))
    g = dict(zip(onednn.FIELDS, geometry, strict=True))
    if g["bias"] or g["sum"] or g["relu"]:
        return None
    x, w = eqn.invars
    return x, w, geometry


def _bias(eqn: JaxprEqn, value: Var, eqns: list[JaxprEqn], producer: dict) -> Var | None:
    """The per-channel vector ``eqn`` adds to ``value``, if it is such an add."""
    other = _other_addend(eqn, value, same_shape=False)
    if not isinstance(other, Var) or other not in producer:
        return None
    made = eqns[producer[other]]  # (C,) -> (1, 1, 1, C): broadcast (jnp's +) or reshape (nn.Conv)
    if made.primitive.name not in ("broadcast_in_dim", "reshape") or len(made.invars) != 1:
        return None
    (vector,) = made.invars
    channels = value.aval.shape[-1]
    per_channel = other.aval.shape == (1,) * (value.aval.ndim - 1) + (channels,)
    ok = per_channel and vector.aval.shape == (channels,) and vector.aval.dtype == value.aval.dtype
    return vector if ok and isinstance(vector, Var) else None


def _other_addend(eqn: JaxprEqn, value: Var, same_shape: bool = True) -> Var | None:
    """The operand ``eqn`` adds to ``value`` (of ``value``'s type when ``same_shape``)."""
    if eqn.primitive.name != "add" or eqn.outvars[0].aval != value.aval:
        return None
    a, b = eqn.invars
    other = b if a is value else a if b is value else None
    if other is None or other is value or not isinstance(other, Var):
        return None
    return other if not same_shape or other.aval == value.aval else None


def _is_relu(eqn: JaxprEqn) -> bool:
    """``max(x, 0)``, possibly wrapped (``jax.nn.relu`` is a custom-JVP function of a jit)."""
    while eqn.primitive.name != "max":
        inner = [p for p in eqn.params.values() if isinstance(p, ClosedJaxpr)]
        if len(inner) != 1 or len(inner[0].eqns) != 1 or len(eqn.invars) != 1:
            return False
        eqn = inner[0].eqns[0]
    zeros = [v for v in eqn.invars if isinstance(v, Literal) and np.all(np.asarray(v.val) == 0)]
    return len(zeros) == 1
