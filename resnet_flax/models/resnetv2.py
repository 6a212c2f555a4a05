"""timm's ResNetV2: pre-activation ResNets in timm's own layout, BiT among them.

BiT (Kolesnikov et al., "Big Transfer") is a pre-activation ResNet with GroupNorm and
weight-standardised convolutions, and a stem whose max-pool pads with zeros. timm's
``resnetv2_50`` is the same network with BatchNorm and plain convolutions. The block computes
what :class:`~resnet_flax.models.resnet.PreActBottleneck` computes, but timm names every layer
differently (``stem.conv``, ``stages.0.blocks.0.norm1``, ``downsample.conv``, ``norm``,
``head.fc``) and nests stages and blocks, so the family has this module of its own; its
submodule names mirror those keys, so weights convert by the same table as every model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.checks import check_images, check_options
from resnet_flax.models.layers import Impl, conv, drop_path, make_divisible, max_pool
from resnet_flax.models.layers import norm as make_norm

ModuleDef = Any


class Stem(nn.Module):
    """timm's ResNetV2 stem: a 7x7/2 conv (no norm: the first block pre-activates it), then a
    3x3/2 max-pool; ``pool="fixed"`` (BiT) pads the pool's input with zeros, not -inf."""

    features: int
    pool: Literal["max", "fixed"] = "max"
    standardize: float | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pool not in ("max", "fixed"):
            raise ValueError(f"stem_pool must be 'max' or 'fixed', not {self.pool!r}")
        c = partial(conv, standardize=self.standardize, dtype=self.dtype, impl=self.impl)
        x = c(self.features, 7, 2, 3, name="conv")(x)
        if self.pool == "fixed":  # timm's ConstantPad2d(1, 0.) + MaxPool2d(3, 2)
            return max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 3, 2, 0, self.impl)
        return max_pool(x, 3, 2, 1, self.impl)


class Projection(nn.Module):
    """timm's ``DownsampleConv`` in a pre-activation net: a bare strided conv1x1 of the
    pre-activated input."""

    features: int
    stride: int = 1
    standardize: float | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = conv(self.features, 1, self.stride, standardize=self.standardize, dtype=self.dtype,
                 impl=self.impl, name="conv")  # fmt: skip
        return c(x)


class PreActBottleneckV2(nn.Module):
    """timm's ``PreActBottleneck``: norm-ReLU before each of conv1x1, conv3x3 (strided),
    conv1x1; the shortcut projects the first pre-activation when ``project``."""

    features: int
    norm: ModuleDef
    stride: int = 1
    project: bool = False
    standardize: float | None = None
    zero_init_residual: bool = False  # timm's zero_init_last: conv3's kernel starts at zero
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        mid = make_divisible(self.features * 0.25)
        c = partial(conv, standardize=self.standardize, dtype=self.dtype, impl=self.impl)
        preact = nn.relu(self.norm(name="norm1")(x, train))
        shortcut = x
        if self.project:
            shortcut = Projection(self.features, self.stride, self.standardize, self.dtype,
                                  self.impl, name="downsample")(preact)  # fmt: skip
        out = c(mid, 1, name="conv1")(preact)
        out = c(mid, 3, self.stride, name="conv2")(nn.relu(self.norm(name="norm2")(out, train)))
        last = {"kernel_init": nn.initializers.zeros} if self.zero_init_residual else {}
        out = c(self.features, 1, name="conv3", **last)(
            nn.relu(self.norm(name="norm3")(out, train))
        )
        return drop_path(self, out, self.drop_path, train) + shortcut


class Stage(nn.Module):
    """timm's ``ResNetStage``: ``blocks.0`` .. ``blocks.N-1``, the first strided and
    projecting."""

    features: int
    depth: int
    stride: int
    norm: ModuleDef
    drop_path: Sequence[float]
    block_options: dict[str, Any]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for j in range(self.depth):
            x = PreActBottleneckV2(
                self.features,
                self.norm,
                stride=self.stride if j == 0 else 1,
                project=j == 0,
                drop_path=self.drop_path[j],
                **self.block_options,
                name=f"blocks_{j}",
            )(x, train)
        return x


class ClassifierHead(nn.Module):
    """timm's ``ClassifierHead(use_conv=True)``: global average, conv1x1 ``fc`` with bias
    (initialised N(0, 0.01) and zero, as timm), flattened."""

    num_classes: int
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        fc = conv(self.num_classes, 1, use_bias=True, dtype=self.dtype, impl=self.impl,
                  kernel_init=nn.initializers.normal(0.01), name="fc")  # fmt: skip
        return fc(x).reshape(x.shape[0], -1)


class ResNetV2(nn.Module):
    """timm's ``ResNetV2`` (pre-activation, bottleneck blocks), attributes as timm's options:

    - ``stage_sizes``, ``widths`` (each stage's output channels, times ``width_factor``:
      BiT's R50x3 is ``width_factor=3``), ``stem_width``;
    - ``stem_pool``: ``"max"`` (torch's -inf padding) or ``"fixed"`` (BiT: zero padding);
    - ``norm_layer``: ``"group"`` (GroupNorm, 32 groups: BiT) or ``"batch"``;
    - ``standardize``: weight-standardised convolutions with this epsilon (BiT: 1e-8), or
      ``None`` for plain ones;
    - ``drop_path_rate`` (timm's linear schedule over the blocks), ``zero_init_residual``
      (timm's ``zero_init_last``, off by default as in timm), ``num_classes``,
      ``in_channels``, ``axis_name``, ``dtype``, ``impl`` as :class:`ResNet`'s.

    Input is NHWC; ``__call__(x, train)`` returns logits. It sows ``stem_output``, ``layer1``
    .. ``layer4`` (the stage outputs) and ``pre_logits`` (after the final norm and pooling)
    into ``intermediates``, as :class:`ResNet` does (``stem`` names the stem's weights here).
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int] = (256, 512, 1024, 2048)
    width_factor: int = 1
    stem_width: int = 64
    stem_pool: Literal["max", "fixed"] = "max"
    norm_layer: Literal["batch", "group"] = "group"
    standardize: float | None = None
    num_classes: int = 1000
    zero_init_residual: bool = False
    drop_path_rate: float = 0.0
    in_channels: int = 3
    axis_name: str | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    head: ClassVar[str] = "head"  # the classifier (``head.fc``), replaced when fine-tuning

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_options(self)
        check_images(x, type(self).__name__, self.in_channels)
        norm = make_norm(
            self.norm_layer, axis_name=self.axis_name, dtype=self.dtype, impl=self.impl
        )
        x = x.astype(self.dtype)
        stem = make_divisible(self.stem_width * self.width_factor)
        x = Stem(stem, self.stem_pool, self.standardize, self.dtype, self.impl, name="stem")(x)
        self.sow("intermediates", "stem_output", x)  # ("stem" is the stem module's name)

        total = sum(self.stage_sizes)
        rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        options = dict(standardize=self.standardize, zero_init_residual=self.zero_init_residual,
                       dtype=self.dtype, impl=self.impl)  # fmt: skip
        first = 0
        for i, (depth, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            x = Stage(
                make_divisible(width * self.width_factor),
                depth,
                stride=1 if i == 0 else 2,
                norm=norm,
                drop_path=tuple(rates[first : first + depth]),
                block_options=options,
                name=f"stages_{i}",
            )(x, train)
            first += depth
            self.sow("intermediates", f"layer{i + 1}", x)

        x = nn.relu(norm(name="norm")(x, train))
        self.sow("intermediates", "pre_logits", jnp.mean(x, axis=(1, 2)))
        return ClassifierHead(self.num_classes, self.dtype, self.impl, name="head")(x)
