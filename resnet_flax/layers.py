"""The building blocks every model uses: one conv factory, one BatchNorm, pooling.

Every convolution in the package is made by :func:`conv` and every normalisation by
:class:`BatchNorm`, so an implementation can be swapped in one place.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

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
    name: str | None = None,
) -> nn.Conv:
    """The one conv factory: torch's ``nn.Conv2d`` semantics in NHWC.

    Padding is explicit and symmetric, as torch pads (XLA's ``'SAME'`` pads stride-2 layers
    asymmetrically and cannot take torchvision weights). ``padding=None`` means
    ``dilation * (kernel_size - 1) // 2``, torchvision's choice for every conv it makes.
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
        name=name,
    )


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
    """

    epsilon: float = 1e-5
    momentum: float = 0.1
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    axis_name: str | None = None
    dtype: Dtype = jnp.float32

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

        axes = tuple(range(x.ndim - 1))
        if train:
            x32 = x.astype(jnp.float32)
            n = math.prod(x.shape[:-1])
            mean = jnp.mean(x32, axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
                n = n * jax.lax.axis_size(self.axis_name)
            # Two-pass variance: E[(x - mean)^2], as precise as torch's.
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))  # torch's running_var convention
                ra_mean.value = (1 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1 - self.momentum) * ra_var.value + self.momentum * unbiased
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value

        # y = (x - mean) * (scale / sqrt(var + eps)) + bias, folded into one multiply-add.
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        add = bias - mean * mul
        return (x * mul.astype(self.dtype) + add.astype(self.dtype)).astype(self.dtype)


def max_pool(x: jax.Array, kernel_size: int, stride: int, padding: int) -> jax.Array:
    """``torch.nn.MaxPool2d`` with explicit symmetric padding (padded with -inf, as torch)."""
    return nn.max_pool(
        x,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
    )


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
