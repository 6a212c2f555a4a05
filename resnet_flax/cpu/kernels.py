"""``impl="cpu"``: the conv, BatchNorm and max-pool formulations that run fastest on XLA:CPU.

Registered behind :mod:`resnet_flax.models.layers`' factories as the kernels ``"cpu"`` when
this module is first imported (by ``layers.kernels("cpu")``), which ``impl="auto"`` picks when
JAX's default backend is the CPU. Each computes what the plain formulation computes, to
float32 round-off (``tests/test_layers.py``, ``tests/test_onednn.py``):

- convolutions: oneDNN's kernels (PyTorch's; :mod:`resnet_flax.cpu.onednn`) where they apply,
  else XLA's convolution with its kernel gradient taken chunk by chunk;
- training-mode BatchNorm: a hand-written VJP in which each channel sum (two forward, two
  backward) is one reduction with its elementwise operand fused in, which XLA:CPU runs as a
  YNNPACK reduce fusion (:mod:`resnet_flax.cpu.backend`): one read of the activations per sum;
- max pooling: a VJP that routes each window's gradient to its first maximum with elementwise
  passes, where autodiff of ``reduce_window`` gives a scatter fed by index tensors the size of
  the input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from resnet_flax.cpu import jax_compat, onednn
from resnet_flax.cpu.backend import CPU_OPTIONS
from resnet_flax.cpu.guard import differentiable_once
from resnet_flax.models.layers import (
    Kernels,
    affine,
    global_moments,
    max_pool_plain,
    register_kernels,
    statistics_count,
)

WEIGHT_GRAD_CHUNK = 16  # images per weight-gradient convolution on XLA's path


def conv_general_dilated(lhs, rhs, window_strides, padding, **options):
    """The CPU convolution: oneDNN's kernels (PyTorch's) where they apply, else XLA's with a
    chunked kernel gradient."""
    lhs, rhs = differentiable_once(lhs, rhs)
    if onednn.supports(lhs, rhs, padding, **options):
        rhs = vary_like(lhs, rhs)
        return onednn.conv_general_dilated(lhs, rhs, window_strides, padding, **options)
    return chunked_weight_grad_conv(lhs, rhs, window_strides, padding, **options)


def chunked_weight_grad_conv(lhs, rhs, window_strides, padding, **options):
    """``lax.conv_general_dilated`` whose gradient takes the kernel's part chunk by chunk.

    XLA:CPU's weight-gradient convolution transposes the whole batch of activations first; on
    chunks of :data:`WEIGHT_GRAD_CHUNK` images that transpose stays in cache.
    """
    config = tuple(sorted(options.items()))
    return _chunked_conv(tuple(window_strides), tuple(map(tuple, padding)), config)(lhs, rhs)


@functools.cache
def _chunked_conv(strides: tuple, padding: tuple, config: tuple) -> Callable:
    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, **dict(config))

    @jax.custom_vjp
    def f(x, w):
        return conv(x, w)

    def fwd(x, w):
        return conv(x, w), (x, w)

    def bwd(residuals, dy):
        x, w = residuals
        dx = jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]
        n, chunk = x.shape[0], WEIGHT_GRAD_CHUNK
        parts = [
            jax.vjp(lambda w, i=i: conv(x[i : i + chunk], w), w)[1](dy[i : i + chunk])[0]
            for i in range(0, n, chunk)
        ]
        return dx, functools.reduce(jnp.add, parts)

    f.defvjp(fwd, bwd)
    return f


def vary_like(x: jax.Array, p: jax.Array) -> jax.Array:
    """``p`` marked as varying over the manual mesh axes ``x`` varies over (inside
    ``shard_map``), so a custom VJP may return a per-device gradient for it; the transpose of
    this cast then sums those over the devices, as autodiff does for the plain version."""
    varying = jax_compat.varying_axes(x) - jax_compat.varying_axes(p)
    return jax.lax.pcast(p, tuple(sorted(varying)), to="varying") if varying else p


def _channel_sums(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last."""
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def batch_norm_train(x, scale, bias, epsilon, axis_name, dtype):
    """Training-mode BatchNorm, ``(y, mean, var)``, with :func:`_batch_norm_fused`'s VJP."""
    x, scale, bias = differentiable_once(x, vary_like(x, scale), vary_like(x, bias))
    return _batch_norm_fused(x, scale, bias, epsilon, axis_name, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_fused(x, scale, bias, epsilon, axis_name, dtype):
    """Training-mode BatchNorm with a hand-written VJP that keeps every pass over the
    activations a single fused loop."""
    return _batch_norm_fused_fwd(x, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_norm_fused_fwd(x, scale, bias, epsilon, axis_name, dtype):
    n = statistics_count(x, None)  # this device's values
    x32 = x.astype(jnp.float32)
    mean = _channel_sums(x32) / n
    var = _channel_sums(jnp.square(x32 - mean)) / n  # two-pass, as torch
    mean, var = global_moments(mean, var, axis_name)
    y = affine(x, scale, bias, mean, var, epsilon, dtype)
    return (y, mean, var), (x, scale, mean, var)


def _batch_norm_fused_bwd(epsilon, axis_name, dtype, residuals, cotangents):
    """The BatchNorm gradient; ``dmean``/``dvar`` are the cotangents of the returned stats.

    ``dscale``/``dbias`` are this device's part (see :func:`vary_like`); ``dx`` needs the
    sums over the whole batch. Each pass recomputes ``x - mean`` from ``x``: written once and
    shared, XLA would store it (for the backward, and across the two passes here) instead of
    fusing it into each loop, so the mean goes through an optimisation barrier (no merging
    with the forward's ``x - mean``) and ``dx`` adds the negated mean (no merging with the
    ``dscale`` pass's subtraction; the same IEEE result).
    """
    x, scale, mean, var = residuals
    dy, dmean, dvar = cotangents
    mean, neg_mean = jax.lax.optimization_barrier((mean, -mean))
    n = statistics_count(x, axis_name)
    inv = jax.lax.rsqrt(var + epsilon)
    x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
    dbias = _channel_sums(dy32)
    dscale = _channel_sums(dy32 * (x32 - mean)) * inv
    total_dbias, total_dscale = _psum(jnp.stack([dbias, dscale]), axis_name)  # one all-reduce
    # dx = scale*inv * (dy - mean(dy) - xhat * mean(dy * xhat)) + the statistics' cotangents
    dy_scale = scale * inv
    centred_scale = 2 * dvar / n - dy_scale * inv * total_dscale / n
    offset = dmean / n - dy_scale * total_dbias / n
    dx = dy32 * dy_scale + (x32 + neg_mean) * centred_scale + offset
    return dx.astype(x.dtype), dscale, dbias


_batch_norm_fused.defvjp(_batch_norm_fused_fwd, _batch_norm_fused_bwd)


def max_pool(x, kernel_size, stride, padding):
    """Max pooling whose VJP routes each window's gradient to its first maximum by comparing
    the window's ``kernel_size**2`` strided views of the input with the output: elementwise
    passes only. (A NaN in a window gets no gradient; torch gives it the NaN's.)"""
    (x,) = differentiable_once(x)
    return _max_pool(x, kernel_size, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, kernel_size, stride, padding):
    return max_pool_plain(x, kernel_size, stride, padding)


def _max_pool_fwd(x, kernel_size, stride, padding):
    y = max_pool_plain(x, kernel_size, stride, padding)
    return y, (x, y)


def _max_pool_bwd(kernel_size, stride, padding, residuals, dy):
    x, y = residuals
    pad = [(0, 0), (padding, padding), (padding, padding), (0, 0)]
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    n, hp, wp, c = xp.shape
    _, oh, ow, _ = y.shape
    span_h, span_w = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    offsets = [(i, j) for i in range(kernel_size) for j in range(kernel_size)]
    # Which offset holds each window's first maximum, row-major as torch scans the window.
    first = jnp.full(y.shape, len(offsets), jnp.int32)
    for k, (i, j) in reversed(list(enumerate(offsets))):
        view = jax.lax.slice(
            xp, (0, i, j, 0), (n, i + span_h, j + span_w, c), (1, stride, stride, 1)
        )
        first = jnp.where(view == y, k, first)
    # Each offset sends its windows' gradients back to the input cells it read. Going through
    # the offsets backwards adds each cell's gradients in the order of their windows, as torch.
    dxp = jnp.zeros_like(xp)
    zero = jnp.zeros((), dy.dtype)
    for k, (i, j) in reversed(list(enumerate(offsets))):
        part = jnp.where(first == k, dy, zero)
        dxp = dxp + jax.lax.pad(
            part,
            zero,
            [
                (0, 0, 0),
                (i, hp - i - span_h, stride - 1),
                (j, wp - j - span_w, stride - 1),
                (0, 0, 0),
            ],
        )
    return (dxp[:, padding : padding + x.shape[1], padding : padding + x.shape[2], :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)

register_kernels("cpu", Kernels(conv_general_dilated, batch_norm_train, max_pool, CPU_OPTIONS))
