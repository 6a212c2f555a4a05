"""Channel attention inside residual blocks, as timm's ResNets place it (after the branch's
last BatchNorm, before the residual sum): squeeze-and-excitation and ECA.

Submodule names are timm's (``se.fc1``, ``se.fc2``; ``se.conv``), so its weights load by the
same renaming as every other layer.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.layers import Impl, conv, make_divisible

Attention = Literal["se", "eca"]


class SqueezeExcite(nn.Module):
    """timm's ``SEModule`` (Hu et al.): global average, conv1x1 -> ReLU -> conv1x1 -> sigmoid,
    the input scaled per channel. The reduction (1/16; ResNet-RS: 1/4) is rounded to a
    multiple of 8."""

    channels: int
    ratio: float = 1 / 16
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        reduced = make_divisible(self.channels * self.ratio)
        c = dict(use_bias=True, dtype=self.dtype, impl=self.impl)
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(conv(reduced, 1, name="fc1", **c)(s))
        s = conv(self.channels, 1, name="fc2", **c)(s)
        return x * jax.nn.sigmoid(s)


class EfficientChannelAttention(nn.Module):
    """timm's ``EcaModule`` (Wang et al., ECA-Net): global average, a 1-D conv across the
    channels (kernel from the channel count: gamma 2, beta 1, odd, at least 3), sigmoid.
    ``channels`` sets the kernel only (a pruned block keeps its unpruned kernel)."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        t = int(abs(math.log(self.channels, 2) + 1) / 2)
        k = max(t if t % 2 else t + 1, 3)
        y = jnp.mean(x, axis=(1, 2))[..., None]  # (batch, channels, 1): channels as the length
        y = nn.Conv(1, (k,), padding=[((k - 1) // 2,) * 2], use_bias=False, dtype=self.dtype,
                    name="conv")(y)  # fmt: skip
        return x * jax.nn.sigmoid(y[..., 0])[:, None, None, :]


def attention(
    kind: Attention | None,
    channels: int,
    ratio: float,
    dtype: Any,
    impl: Impl,
    nominal_channels: int | None = None,
) -> nn.Module | None:
    """The attention module named ``kind`` (called ``se`` in the block, as timm names it);
    ``ratio`` is SE's reduction; ``nominal_channels`` (default ``channels``) sets ECA's
    kernel."""
    if kind is None:
        return None
    if kind == "se":
        return SqueezeExcite(channels, ratio, dtype=dtype, impl=impl, name="se")
    return EfficientChannelAttention(nominal_channels or channels, dtype=dtype, name="se")
