"""Inference with every BatchNorm folded into the convolution that feeds it.

In eval mode BatchNorm is a per-channel affine map, so ``bn(conv(x, W))`` equals
``conv(x, W * mul) + add`` with ``mul = scale / sqrt(var + eps)`` and
``add = bias - mean * mul``. :func:`fold_batch_norm` finds the conv -> BatchNorm pairs by
tracing the model once (a BatchNorm whose input is a conv's output), scales the kernels ahead of
time, and returns a jitted forward that skips the folded BatchNorms. It works for any model
built from :func:`resnet_flax.models.layers.conv` and
:class:`~resnet_flax.models.layers.BatchNorm`; a BatchNorm not fed by a conv (pre-activation
nets) or fed by a weight-standardised one stays as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import unfreeze

from resnet_flax.models.layers import (
    BatchNorm,
    StandardizedKernel,
    affine_coefficients,
    compiler_options,
    resolve_impl,
)

Path = tuple[str, ...]


def conv_norm_pairs(model: nn.Module, variables: Any, image_shape: tuple[int, ...]) -> dict:
    """``{conv path: (BatchNorm path, its epsilon)}`` for each BatchNorm applied directly to a
    conv's output."""
    produced_by: dict[int, Path] = {}
    pairs: dict[Path, tuple[Path, float]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        if isinstance(module, nn.Conv) and not isinstance(module.promote_dtype, StandardizedKernel):
            produced_by[id(out)] = module.path  # (a standardised kernel cannot absorb a scale)
        elif isinstance(module, BatchNorm) and id(args[0]) in produced_by:
            pairs[produced_by[id(args[0])]] = (module.path, module.epsilon)
        return out

    def trace(v, x):
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False)

    jax.eval_shape(trace, variables, jax.ShapeDtypeStruct(image_shape, jnp.float32))
    return pairs


def fold_variables(variables: Any, pairs: dict[Path, tuple[Path, float]]) -> tuple[dict, dict]:
    """Kernels scaled by their BatchNorm, and the bias each folded conv without one adds.

    A conv that has a bias of its own (VGG's) takes the folded bias in its place.
    """
    params = unfreeze(variables["params"])
    stats = variables.get("batch_stats", {})  # none in a model without BatchNorm
    biases = {}
    for conv_path, (norm_path, epsilon) in pairs.items():
        conv, norm, stat = _at(params, conv_path), _at(params, norm_path), _at(stats, norm_path)
        mul, add = affine_coefficients(
            norm["scale"], norm["bias"], stat["mean"], stat["var"], epsilon
        )
        conv["kernel"] = conv["kernel"] * mul
        if "bias" in conv:
            conv["bias"] = conv["bias"] * mul + add
        else:
            biases["/".join(conv_path)] = add
    return params, biases


def fold_batch_norm(
    model: nn.Module,
    variables: Any,
    image_shape: tuple[int, ...] = (1, 224, 224, 3),
    post_ops: bool = False,
) -> Callable[[jax.Array], jax.Array]:
    """``predict(images) -> logits``: eval mode with BatchNorm folded into the convs.

    ``image_shape`` is any input shape the model takes, used once to find the pairs; the
    returned function is jitted (with the compiler options of the model's ``impl``) and
    compiles once per input shape. With ``post_ops``, for a model built with the CPU kernels
    (``impl="cpu"``, or ``"auto"`` on a CPU), each oneDNN conv also applies the bias, residual
    sum and ReLU that follow it (:mod:`resnet_flax.cpu.postops`; the same numbers either way);
    the result is then XLA:CPU-only, as those kernels are.
    """
    impl = getattr(model, "impl", "plain")
    if post_ops and resolve_impl(impl) != "cpu":
        raise ValueError(
            f"fold_batch_norm(post_ops=True) fuses the CPU kernels' oneDNN convolutions; this "
            f"model computes with impl={impl!r}: build it with impl='cpu' (or 'auto' on a CPU), "
            f"or leave post_ops off."
        )
    pairs = conv_norm_pairs(model, variables, image_shape)
    folded_norms = {norm_path for norm_path, _ in pairs.values()}
    params, biases = fold_variables(variables, pairs)
    folded = {**variables, "params": params}

    def forward(v, bias, images):
        def interceptor(next_fun, args, kwargs, context):
            module, call = context.module, context.method_name == "__call__"
            if call and isinstance(module, BatchNorm) and module.path in folded_norms:
                return args[0]  # already applied by the conv before it
            out = next_fun(*args, **kwargs)
            key = "/".join(module.path)
            if call and isinstance(module, nn.Conv) and key in bias:
                out = out + bias[key].astype(out.dtype)
            return out

        with nn.intercept_methods(interceptor):
            return model.apply(v, images, train=False)

    if post_ops:
        from resnet_flax.cpu.postops import fuse_post_ops  # the CPU kernels, asked for

        forward = fuse_post_ops(forward)
    jitted = jax.jit(forward, compiler_options=compiler_options(impl))
    return functools.partial(jitted, folded, biases)


def _at(tree: dict, path: Path) -> dict:
    for name in path:
        tree = tree[name]
    return tree
