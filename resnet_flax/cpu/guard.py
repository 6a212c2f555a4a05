"""What the CPU kernels cannot do, said where a program asks for it.

The kernels are custom VJPs (hand-written gradients) and, for convolutions, oneDNN calls
through the XLA FFI. They support ``jit``, one ``grad``, ``vmap``, ``checkpoint``,
``eval_shape`` and ``shard_map``; they cannot be differentiated in forward mode, the oneDNN
convolutions' gradients cannot be differentiated again, their calls cannot be serialised by
``jax.export``, and XLA's automatic partitioner cannot split them. JAX's own errors there
(``can't apply forward-mode autodiff (jvp) to a custom_vjp function``, ``The FFI call ...
cannot be differentiated``, ``Cannot serialize code with custom calls ...``) do not say what
to do, and under a sharded ``jit`` nothing is said at all: XLA all-gathers the operands and
every device computes the whole batch.

Two identity primitives mark the kernels' operands and raise :class:`KernelError`, which
names ``impl`` and the fix, where those happen:

- :func:`differentiable_once` on each kernel's inputs: reverse mode passes through (its
  linearisation is the identity); forward mode (``jvp``, ``jacfwd``, a Hessian-vector
  product) raises. Its JVP rule marks the tangent with a third primitive that transposes as
  the identity but raises when the tangent is computed: ``jax.checkpoint`` differentiates
  through JVP rules and transposes the tangents, which is reverse mode and passes, where
  ``jax.jvp`` computes them.
- :func:`ffi_operand` on every oneDNN call's operands: differentiating it (a second-order
  gradient through a convolution's backward pass) raises, and so does lowering it for
  ``jax.export`` or for a program XLA partitions automatically over several devices
  (inside ``shard_map`` the program is per device, and it lowers as it is).
"""

from __future__ import annotations

from typing import Any

import jax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from resnet_flax.cpu import jax_compat

USE_PLAIN = (
    "Build the model with impl='plain' (the default: plain XLA, every JAX transform on every "
    "backend; the same parameters and numbers)."
)
MESSAGES = {
    "forward": (
        "forward-mode differentiation (jax.jvp, jax.jacfwd, a Hessian-vector product) of a "
        "model built with impl='cpu': the CPU kernels have hand-written reverse-mode gradients "
        "only."
    ),
    "second_order": (
        "a second-order gradient through a model built with impl='cpu': its oneDNN "
        "convolutions are differentiable once."
    ),
    "export": (
        "jax.export of a model built with impl='cpu': its oneDNN convolutions are calls into "
        "this process (XLA FFI handlers), which cannot be serialised."
    ),
    "partitioned": (
        "jax.jit over {devices} devices with a model built with impl='cpu': XLA's automatic "
        "partitioner cannot split the CPU kernels' oneDNN calls, so every device would compute "
        "the whole batch. Run the kernels per device under jax.shard_map (as the trainer does), "
        "or:"
    ),
}


class KernelError(ValueError):
    """A JAX transform the CPU kernels (``impl="cpu"``) do not support."""


def _error(kind: str, **details: Any) -> KernelError:
    return KernelError(f"{MESSAGES[kind].format(**details)} {USE_PLAIN}")


def _identity_primitive(name: str) -> Primitive:
    primitive = Primitive(name)
    primitive.def_impl(lambda x: x)
    primitive.def_abstract_eval(lambda aval: aval)
    batching.primitive_batchers[primitive] = lambda args, dims: (primitive.bind(*args), dims[0])
    return primitive


FFI_OPERAND = "resnet_flax_cpu_ffi_operand"  # the primitive's name, as a jaxpr shows it
_once = _identity_primitive("resnet_flax_cpu_differentiable_once")
_tangent = _identity_primitive("resnet_flax_cpu_forward_tangent")
_ffi = _identity_primitive(FFI_OPERAND)


def _refuse(kind: str):
    def refuse(*args, **kwargs):
        raise _error(kind)

    return refuse


def _marked_jvp(primals, tangents):
    """The JVP of :func:`differentiable_once`: the tangent goes on, marked."""
    ((x,), (t,)) = primals, tangents
    if type(t) is ad.Zero:
        return _once.bind(x), t
    return _once.bind(x), _tangent.bind(t)


def _passing_linearization(primitive: Primitive):
    """Reverse mode through ``primitive``: the primal as it is, the tangent unchanged."""

    def linearize(is_vjp, nonzeros, x):
        return primitive.bind(x), nonzeros[0], (), lambda residuals, tangent: tangent

    return linearize


def _refusing_linearization(kind: str):
    def linearize(is_vjp, nonzeros, x):
        raise _error(kind)

    return linearize


def _lower_ffi_operand(ctx, x):
    if jax_compat.lowering_for_export(ctx):
        raise _error("export")
    devices = jax_compat.auto_partitioned_devices(ctx)
    if devices > 1:
        raise _error("partitioned", devices=devices)
    return [x]


ad.primitive_jvps[_once] = _marked_jvp
jax_compat.register_linearization(_once, _passing_linearization(_once))
mlir.register_lowering(_once, lambda ctx, x: [x])

# A forward-mode tangent: linear, its transpose the identity (reverse mode through a JVP rule,
# as jax.checkpoint differentiates), and computing it is forward mode: refused.
ad.deflinear2(_tangent, lambda cotangent, x: [cotangent])
_tangent.def_impl(_refuse("forward"))
mlir.register_lowering(_tangent, _refuse("forward"))

ad.primitive_jvps[_ffi] = _refuse("second_order")
jax_compat.register_linearization(_ffi, _refusing_linearization("second_order"))
mlir.register_lowering(_ffi, _lower_ffi_operand)


def differentiable_once(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """``arrays`` unchanged; forward-mode differentiation of them raises :class:`KernelError`."""
    return tuple(_once.bind(a) for a in arrays)


def ffi_operand(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """``arrays`` unchanged, as operands of a oneDNN call: differentiating them, exporting them
    or lowering them for XLA's automatic partitioning raises :class:`KernelError`."""
    return tuple(_ffi.bind(a) for a in arrays)
