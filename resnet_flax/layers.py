"""The building blocks every model uses: one conv factory, one BatchNorm, pooling.

Every convolution in the package is made by :func:`conv` and every normalisation by
:class:`BatchNorm`, so an implementation can be swapped in one place.

They and :func:`max_pool` take ``impl``: ``"plain"`` is the textbook formulation left to
autodiff, ``"cpu"`` what runs fastest on XLA:CPU, ``"auto"`` (the default) picks ``"cpu"`` when
JAX's default backend is the CPU. For convs ``"cpu"`` means oneDNN's kernels (PyTorch's;
:mod:`resnet_flax.onednn`) where they apply, else XLA's convolution with a chunked kernel
gradient; for BatchNorm and max pooling a hand-written gradient. Each agrees with torch's
autograd to float32 round-off (``tests/test_layers.py``, ``tests/test_onednn.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_flax import onednn

Dtype = Any
Impl = Literal["auto", "plain", "cpu"]
WEIGHT_GRAD_CHUNK = 16  # images per weight-gradient convolution on the CPU

# torchvision's initialisers, so that a Flax-initialised model is distributed like torchvision's.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
    """torch.nn.Linear's default init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel_size: int,
    stride: int = 1,
    padding: int | None = None,
    *,
    groups: int = 1,
    dilation: int = 1,
    use_bias: bool = False,
    dtype: Dtype = jnp.float32,
    kernel_init: nn.initializers.Initializer = kaiming_normal_fan_out,
    impl: Impl = "auto",
    name: str | None = None,
) -> nn.Conv:
    """The one conv factory: torch's ``nn.Conv2d`` semantics in NHWC.

    Padding is explicit and symmetric, as torch pads (XLA's ``'SAME'`` pads stride-2 layers
    asymmetrically and cannot take torchvision weights). ``padding=None`` means
    ``dilation * (kernel_size - 1) // 2``, torchvision's choice for every conv it makes.

    ``impl="cpu"`` runs float32 convs through oneDNN (:func:`cpu_conv`).
    """
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=kernel_init,
        bias_init=nn.initializers.zeros,
        conv_general_dilated=cpu_conv if resolve_impl(impl) == "cpu" else None,
        name=name,
    )


def cpu_conv(lhs, rhs, window_strides, padding, **options):
    """The CPU convolution: oneDNN's kernels (PyTorch's) where they apply, else XLA's with a
    chunked kernel gradient."""
    if onednn.supports(lhs, rhs, padding, **options):
        rhs = _vary_like(lhs, rhs)
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


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d``, exactly, over the last axis.

    - ``eps=1e-5``; ``momentum=0.1`` in torch's convention (weight of the *new* batch).
    - Training normalises with the biased batch variance and updates ``running_var`` with the
      *unbiased* one, as torch does, so one train step in either framework leaves the same state.
    - State lives in the ``batch_stats`` collection: ``mean``, ``var`` and
      ``num_batches_tracked`` (torch's counter, kept so import/export round-trips exactly).
    - ``axis_name``: inside ``shard_map``/``pmap``, the statistics are taken over the whole
      global batch (synchronised BatchNorm); ``None`` keeps them per device.
    - Statistics are computed in float32 whatever ``dtype`` the activations have.
    - ``impl="cpu"``: training mode is a custom VJP written so that each channel sum (two
      forward, two backward) is one reduction with its elementwise operand fused in, which
      XLA:CPU runs as a YNNPACK reduce fusion (:mod:`resnet_flax.backend`): one read of the
      activations per sum, nothing materialised for it.
    """

    epsilon: float = 1e-5
    momentum: float = 0.1
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    axis_name: str | None = None
    dtype: Dtype = jnp.float32
    impl: Impl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        count = self.variable(
            "batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32)
        )
        if not train:
            return _affine(x, scale, bias, ra_mean.value, ra_var.value, self.epsilon, self.dtype)

        if resolve_impl(self.impl) == "cpu":
            scale, bias = _vary_like(x, scale), _vary_like(x, bias)
            train_fn = _batch_norm_fused
        else:
            train_fn = _batch_norm_plain
        y, mean, var = train_fn(x, scale, bias, self.epsilon, self.axis_name, self.dtype)
        if not self.is_initializing():
            n = _count(x, self.axis_name)
            unbiased = var * (n / max(n - 1, 1))  # torch's running_var convention
            ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
            ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
            count.value = count.value + 1
        return y


def resolve_impl(impl: Impl) -> str:
    """``"plain"`` or ``"cpu"``; ``"auto"`` is ``"cpu"`` when JAX runs on the CPU."""
    if impl not in ("auto", "plain", "cpu"):
        raise ValueError(f"impl must be 'auto', 'plain' or 'cpu', not {impl!r}")
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "plain"
    return impl


def _vary_like(x: jax.Array, p: jax.Array) -> jax.Array:
    """``p`` marked as varying over the manual mesh axes ``x`` varies over (inside
    ``shard_map``), so a custom VJP may return a per-device gradient for it; the transpose of
    this cast then sums those over the devices, as autodiff does for the plain version."""
    varying = _varying(x) - _varying(p)
    return jax.lax.pcast(p, tuple(sorted(varying)), to="varying") if varying else p


def _varying(x: jax.Array) -> frozenset:
    manual = getattr(jax.typeof(x), "manual_axis_type", None)
    return frozenset(getattr(manual, "varying", ()))


def _count(x: jax.Array, axis_name: str | None) -> int:
    """How many values each channel's statistics are taken over (all devices on the axis)."""
    devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    return math.prod(x.shape[:-1]) * devices


def affine_coefficients(scale, bias, mean, var, epsilon):
    """``(mul, add)`` with ``bn(x) = x * mul + add``: BatchNorm's normalisation as an affine map."""
    mul = scale * jax.lax.rsqrt(var + epsilon)
    return mul, bias - mean * mul


def _affine(x, scale, bias, mean, var, epsilon, dtype):
    """``(x - mean) * scale / sqrt(var + eps) + bias``, folded into one multiply-add."""
    mul, add = affine_coefficients(scale, bias, mean, var, epsilon)
    return (x * mul.astype(dtype) + add.astype(dtype)).astype(dtype)


def _batch_norm_plain(x, scale, bias, epsilon, axis_name, dtype):
    """Training-mode BatchNorm as written in the textbook; autodiff takes the gradient."""
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    # Two-pass variance: E[(x - mean)^2], as precise as torch's.
    var = jnp.mean(jnp.square(x32 - mean), axes)
    if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
    return _affine(x, scale, bias, mean, var, epsilon, dtype), mean, var


def _channel_sums(x: jax.Array) -> jax.Array:
    """Sum over every axis but the last."""
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))


def _psum(x: jax.Array, axis_name: str | None) -> jax.Array:
    return x if axis_name is None else jax.lax.psum(x, axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_fused(x, scale, bias, epsilon, axis_name, dtype):
    """Training-mode BatchNorm with a hand-written VJP that keeps every pass over the
    activations a single fused loop."""
    return _batch_norm_fused_fwd(x, scale, bias, epsilon, axis_name, dtype)[0]


def _batch_norm_fused_fwd(x, scale, bias, epsilon, axis_name, dtype):
    n = _count(x, axis_name)
    x32 = x.astype(jnp.float32)
    mean = _psum(_channel_sums(x32), axis_name) / n
    var = _psum(_channel_sums(jnp.square(x32 - mean)), axis_name) / n  # two-pass, as torch
    y = _affine(x, scale, bias, mean, var, epsilon, dtype)
    return (y, mean, var), (x, scale, mean, var)


def _batch_norm_fused_bwd(epsilon, axis_name, dtype, residuals, cotangents):
    """The BatchNorm gradient; ``dmean``/``dvar`` are the cotangents of the returned stats.

    ``dscale``/``dbias`` are this device's part (see :func:`_vary_like`); ``dx`` needs the
    sums over the whole batch. Each pass recomputes ``x - mean`` from ``x``: written once and
    shared, XLA would store it (for the backward, and across the two passes here) instead of
    fusing it into each loop, so the mean goes through an optimisation barrier (no merging
    with the forward's ``x - mean``) and ``dx`` adds the negated mean (no merging with the
    ``dscale`` pass's subtraction; the same IEEE result).
    """
    x, scale, mean, var = residuals
    dy, dmean, dvar = cotangents
    mean, neg_mean = jax.lax.optimization_barrier((mean, -mean))
    n = _count(x, axis_name)
    inv = jax.lax.rsqrt(var + epsilon)
    x32, dy32 = x.astype(jnp.float32), dy.astype(jnp.float32)
    dbias = _channel_sums(dy32)
    dscale = _channel_sums(dy32 * (x32 - mean)) * inv
    total_dbias, total_dscale = _psum(dbias, axis_name), _psum(dscale, axis_name)
    # dx = scale*inv * (dy - mean(dy) - xhat * mean(dy * xhat)) + the statistics' cotangents
    dy_scale = scale * inv
    centred_scale = 2 * dvar / n - dy_scale * inv * total_dscale / n
    offset = dmean / n - dy_scale * total_dbias / n
    dx = dy32 * dy_scale + (x32 + neg_mean) * centred_scale + offset
    return dx.astype(x.dtype), dscale, dbias


_batch_norm_fused.defvjp(_batch_norm_fused_fwd, _batch_norm_fused_bwd)


def max_pool(
    x: jax.Array, kernel_size: int, stride: int, padding: int, impl: Impl = "auto"
) -> jax.Array:
    """``torch.nn.MaxPool2d`` with explicit symmetric padding (padded with -inf, as torch).

    The gradient goes to the first maximum of each window in row-major order, as torch's.
    ``impl="cpu"`` takes it with :func:`_max_pool_first_max`'s VJP; ``"plain"`` lets autodiff
    differentiate ``reduce_window``, which XLA:CPU turns into a scatter fed by four int32
    index tensors the size of the input (about 0.3 s of a ResNet-50 batch-32 train step).
    """
    if resolve_impl(impl) == "cpu":
        return _max_pool_first_max(x, kernel_size, stride, padding)
    return _max_pool(x, kernel_size, stride, padding)


def _max_pool(x: jax.Array, kernel_size: int, stride: int, padding: int) -> jax.Array:
    return nn.max_pool(
        x,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_first_max(x, kernel_size, stride, padding):
    """Max pooling whose VJP routes each window's gradient to its first maximum by comparing
    the window's ``kernel_size**2`` strided views of the input with the output: elementwise
    passes only. (A NaN in a window gets no gradient; torch gives it the NaN's.)"""
    return _max_pool(x, kernel_size, stride, padding)


def _max_pool_first_max_fwd(x, kernel_size, stride, padding):
    y = _max_pool(x, kernel_size, stride, padding)
    return y, (x, y)


def _max_pool_first_max_bwd(kernel_size, stride, padding, residuals, dy):
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


_max_pool_first_max.defvjp(_max_pool_first_max_fwd, _max_pool_first_max_bwd)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """``torch.nn.AdaptiveAvgPool2d`` for NHWC input, any input size.

    Output cell ``i`` averages input rows ``floor(i*H/out) .. ceil((i+1)*H/out)``, as torch does,
    written as two small averaging matrices (static, built at trace time).
    """
    h, w = x.shape[1:3]
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x
    if (oh, ow) == (1, 1):
        return jnp.mean(x, axis=(1, 2), keepdims=True)
    ph = jnp.asarray(_pool_matrix(h, oh), x.dtype)
    pw = jnp.asarray(_pool_matrix(w, ow), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", ph, x, pw)


def _pool_matrix(size: int, out: int) -> np.ndarray:
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def torch_flatten(x: jax.Array) -> jax.Array:
    """Flatten NHWC features in torch's NCHW order, so a following Linear ports unchanged."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
