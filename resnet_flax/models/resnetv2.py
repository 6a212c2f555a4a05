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
from resnet_flax.models.layers import (
    Impl,
    conv,
    drop_path,
    make_divisible,
    max_pool,
    norm_act,
)
from resnet_flax.models.layers import norm as make_norm
from resnet_flax.models.resnet import avg_pool_ceil

ModuleDef = Any


class Stem(nn.Module):
    """timm's ResNetV2 stem: a 7x7/2 conv (``kind="conv"``), or three 3x3 convs, the first of
    stride 2, with norm-acts between them (``"deep"``: half the stem's width each;
    ``"deep_tiered"``: 3/8 then 1/2); no norm after the last conv (the first block
    pre-activates it); then a 3x3/2 max-pool, which ``pool="fixed"`` (BiT) pads with zeros,
    not -inf."""

    features: int
    kind: Literal["conv", "deep", "deep_tiered"] = "conv"
    pool: Literal["max", "fixed"] = "max"
    norm: ModuleDef = None
    standardize: float | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.pool not in ("max", "fixed"):
            raise ValueError(f"stem_pool must be 'max' or 'fixed', not {self.pool!r}")
        c = partial(conv, standardize=self.standardize, dtype=self.dtype, impl=self.impl)
        if self.kind == "conv":
            x = c(self.features, 7, 2, 3, name="conv")(x)
        elif self.kind in ("deep", "deep_tiered"):
            out = self.features
            first = 3 * out // 8 if self.kind == "deep_tiered" else out // 2
            x = norm_act(self.norm(name="norm1"), c(first, 3, 2, name="conv1")(x), train)
            x = norm_act(self.norm(name="norm2"), c(out // 2, 3, name="conv2")(x), train)
            x = c(out, 3, name="conv3")(x)
        else:
            raise ValueError(f"stem must be 'conv', 'deep' or 'deep_tiered', not {self.kind!r}")
        if self.pool == "fixed":  # timm's ConstantPad2d(1, 0.) + MaxPool2d(3, 2)
            return max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 3, 2, 0, self.impl)
        return max_pool(x, 3, 2, 1, self.impl)


class Projection(nn.Module):
    """timm's ``DownsampleConv`` in a pre-activation net: a bare strided conv1x1 of the
    pre-activated input; with ``avg_down`` (``DownsampleAvg``) a 2x2 average pool (ceil mode)
    does the striding and the conv1x1 follows."""

    features: int
    stride: int = 1
    avg_down: bool = False
    standardize: float | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        stride = self.stride
        if self.avg_down and stride > 1:
            x, stride = avg_pool_ceil(x, stride), 1
        c = conv(self.features, 1, stride, standardize=self.standardize, dtype=self.dtype,
                 impl=self.impl, name="conv")  # fmt: skip
        return c(x)


class PreActBlockV2(nn.Module):
    """Fields of timm's ResNetV2 blocks: the norm-act before each conv, a shortcut that
    projects the first pre-activation when ``project``."""

    features: int
    norm: ModuleDef
    stride: int = 1
    project: bool = False
    avg_down: bool = False
    standardize: float | None = None
    zero_init_residual: bool = False  # timm's zero_init_last: the last conv's kernel is zero
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    def shortcut(self, x: jax.Array, preact: jax.Array) -> jax.Array:
        if not self.project:
            return x
        return Projection(self.features, self.stride, self.avg_down, self.standardize,
                          self.dtype, self.impl, name="downsample")(preact)  # fmt: skip

    def last_conv(self) -> dict[str, Any]:
        return {"kernel_init": nn.initializers.zeros} if self.zero_init_residual else {}


class PreActBottleneckV2(PreActBlockV2):
    """timm's ``PreActBottleneck``: norm-act before each of conv1x1, conv3x3 (strided),
    conv1x1."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        mid = make_divisible(self.features * 0.25)
        c = partial(conv, standardize=self.standardize, dtype=self.dtype, impl=self.impl)
        preact = norm_act(self.norm(name="norm1"), x, train)
        shortcut = self.shortcut(x, preact)
        out = c(mid, 1, name="conv1")(preact)
        out = c(mid, 3, self.stride, name="conv2")(norm_act(self.norm(name="norm2"), out, train))
        out = c(self.features, 1, name="conv3", **self.last_conv())(
            norm_act(self.norm(name="norm3"), out, train)
        )
        return drop_path(self, out, self.drop_path, train) + shortcut


class PreActBasicV2(PreActBlockV2):
    """timm's ``PreActBasic`` (``resnetv2_18``/``34``): norm-act before each of two 3x3
    convs, the first strided."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = partial(conv, standardize=self.standardize, dtype=self.dtype, impl=self.impl)
        preact = norm_act(self.norm(name="norm1"), x, train)
        shortcut = self.shortcut(x, preact)
        out = c(self.features, 3, self.stride, name="conv1")(preact)
        out = c(self.features, 3, name="conv2", **self.last_conv())(
            norm_act(self.norm(name="norm2"), out, train)
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
    block: type[PreActBlockV2] = PreActBottleneckV2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for j in range(self.depth):
            x = self.block(
                self.features,
                self.norm,
                stride=self.stride if j == 0 else 1,
                project=j == 0 and (self.stride != 1 or x.shape[-1] != self.features),
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
    """timm's ``ResNetV2`` (pre-activation), attributes as timm's options:

    - ``stage_sizes``, ``widths`` (each stage's output channels, times ``width_factor``:
      BiT's R50x3 is ``width_factor=3``), ``stem_width``;
    - ``block``: ``"bottleneck"`` (timm's ``PreActBottleneck``) or ``"basic"`` (``PreActBasic``,
      ``resnetv2_18``/``34``, whose ``widths`` are (64, 128, 256, 512));
    - ``stem``: ``"conv"`` (7x7/2), ``"deep"`` or ``"deep_tiered"`` (three 3x3 convs, timm's
      ``d`` and ``t`` variants); ``avg_down``: shortcuts pool, then project (timm's
      ``DownsampleAvg``);
    - ``stem_pool``: ``"max"`` (torch's -inf padding) or ``"fixed"`` (BiT: zero padding);
    - ``norm_layer``: every norm-act layer: ``"group"`` (GroupNorm, 32 groups: BiT),
      ``"batch"``, ``"evonorm"`` (EvoNorm-S0) or ``"frn"`` (FilterResponseNorm with TLU), the
      last two with their own non-linearity in place of the ReLU;
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
    block: Literal["bottleneck", "basic"] = "bottleneck"
    stem: Literal["conv", "deep", "deep_tiered"] = "conv"
    stem_width: int = 64
    stem_pool: Literal["max", "fixed"] = "max"
    avg_down: bool = False
    norm_layer: Literal["batch", "group", "evonorm", "frn"] = "group"
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
        blocks = {"bottleneck": PreActBottleneckV2, "basic": PreActBasicV2}
        if self.block not in blocks:
            raise ValueError(f"block must be 'bottleneck' or 'basic', not {self.block!r}")
        stem = make_divisible(self.stem_width * self.width_factor)
        x = Stem(stem, self.stem, self.stem_pool, norm, self.standardize, self.dtype, self.impl,
                 name="stem")(x, train)  # fmt: skip
        self.sow("intermediates", "stem_output", x)  # ("stem" is the stem module's name)

        total = sum(self.stage_sizes)
        rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        options = dict(avg_down=self.avg_down, standardize=self.standardize,
                       zero_init_residual=self.zero_init_residual, dtype=self.dtype,
                       impl=self.impl)  # fmt: skip
        first = 0
        for i, (depth, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            x = Stage(
                make_divisible(width * self.width_factor),
                depth,
                stride=1 if i == 0 else 2,
                norm=norm,
                drop_path=tuple(rates[first : first + depth]),
                block_options=options,
                block=blocks[self.block],
                name=f"stages_{i}",
            )(x, train)
            first += depth
            self.sow("intermediates", f"layer{i + 1}", x)

        x = norm_act(norm(name="norm"), x, train)
        self.sow("intermediates", "pre_logits", jnp.mean(x, axis=(1, 2)))
        return ClassifierHead(self.num_classes, self.dtype, self.impl, name="head")(x)
