"""One generic ResNet: torchvision's ResNet/ResNeXt/Wide ResNet, timm's ResNet-D, CIFAR ResNets,
pre-activation.

Submodule names mirror torchvision's state_dict keys (``layer1.0.conv1`` is ``layer1_0/conv1``),
so converting weights is a renaming plus a transpose (see :mod:`resnet_flax.io.convert`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.attention import Attention, attention
from resnet_flax.models.checks import check_images, check_options, did_you_mean
from resnet_flax.models.layers import (
    Impl,
    anti_alias,
    conv,
    drop_path,
    max_pool,
    torch_linear_init,
)
from resnet_flax.models.layers import norm as make_norm

ModuleDef = Any
Shortcut = Literal["projection", "avg_pool", "zero_pad"]
AntiAlias = Literal["avg", "blur"]
Widths = tuple[int, int, int]  # one block's conv1, conv2, conv3 output channels


def avg_pool_ceil(x: jax.Array, stride: int) -> jax.Array:
    """``nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)``: a last window that
    overhangs an odd edge averages the pixels it covers."""
    pads = [(0, -(-(n - 2) // stride) * stride + 2 - n) for n in x.shape[1:3]]
    return nn.avg_pool(x, (2, 2), (stride, stride), padding=pads, count_include_pad=False)


def zero_pad_shortcut(x: jax.Array, stride: int, features: int) -> jax.Array:
    """Option-A shortcut of He et al. 2016 (section 4.2): subsample, then zero-pad channels."""
    x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))


class Block(nn.Module):
    """Fields shared by every residual block; ``_shortcut`` reads them."""

    planes: int
    norm: ModuleDef
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    base_width: int = 64
    shortcut: Shortcut | None = None
    zero_init_residual: bool = False
    attn: Attention | None = None  # timm's attn_layer: after the branch's last BatchNorm
    se_ratio: float = 1 / 16
    drop_path: float = 0.0  # stochastic depth: the branch's drop probability in training
    aa: AntiAlias | None = None  # timm's aa_layer: the strided conv runs at stride 1, then this
    reduce_first: int = 1  # timm's block_reduce_first: the first conv's width divided by this
    down_kernel_size: int = 1  # the projection shortcut's kernel where it is strided
    widths: Widths | None = None  # explicit channels (timm's pruned models), else computed
    stride_in_1x1: bool = False  # v1's bottleneck: the stride on the first 1x1 conv
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    expansion: ClassVar[int] = 1
    preact: ClassVar[bool] = False

    def strided(self) -> tuple[int, bool]:
        """The strided conv's stride, and whether anti-aliasing follows it instead."""
        use_aa = self.aa is not None and self.stride == 2
        return (1 if use_aa else self.stride), use_aa


class BasicBlock(Block):
    """torchvision's ``BasicBlock``: two 3x3 convs (expansion 1)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.groups != 1 or self.base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and width_per_group=64")
        if self.dilation > 1:
            raise ValueError("BasicBlock does not support dilation > 1 (torchvision neither)")
        c = partial(conv, dtype=self.dtype, impl=self.impl)
        first, _, features = self.widths or (self.planes // self.reduce_first, 0, self.planes)
        stride, use_aa = self.strided()
        out = c(first, 3, stride, name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out, train))
        if use_aa:
            out = anti_alias(self.aa, out, self.stride)
        out = c(features, 3, name="conv2")(out)
        out = self.norm(name="bn2", scale_init=_last_bn_init(self.zero_init_residual))(out, train)
        out = drop_path(self, _attend(self, out), self.drop_path, train)
        return nn.relu(_residual_sum(self, out, _shortcut(self, x, train)))


class Bottleneck(Block):
    """torchvision's ``Bottleneck`` (v1.5: the stride sits on the 3x3 conv), expansion 4."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        first, width, features = self.widths or (
            width // self.reduce_first,
            width,
            self.planes * self.expansion,
        )
        c = partial(conv, dtype=self.dtype, impl=self.impl)
        stride, use_aa = self.strided()
        stride_1x1, stride = (stride, 1) if self.stride_in_1x1 else (1, stride)
        out = nn.relu(self.norm(name="bn1")(c(first, 1, stride_1x1, name="conv1")(x), train))
        out = c(width, 3, stride, groups=self.groups, dilation=self.dilation, name="conv2")(out)
        out = nn.relu(self.norm(name="bn2")(out, train))
        if use_aa:
            out = anti_alias(self.aa, out, self.stride)
        out = c(features, 1, name="conv3")(out)
        out = self.norm(name="bn3", scale_init=_last_bn_init(self.zero_init_residual))(out, train)
        out = drop_path(self, _attend(self, out), self.drop_path, train)
        return nn.relu(_residual_sum(self, out, _shortcut(self, x, train)))


class PreActBasicBlock(Block):
    """Pre-activation basic block (He et al., "Identity Mappings in Deep Residual Networks")."""

    preact = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = partial(conv, dtype=self.dtype, impl=self.impl)
        out = nn.relu(self.norm(name="bn1")(x, train))
        identity = _shortcut(self, x, train, preactivated=out)
        out = c(self.planes, 3, self.stride, name="conv1")(out)
        out = nn.relu(self.norm(name="bn2")(out, train))
        out = c(self.planes, 3, name="conv2")(out)
        return out + identity


class PreActBottleneck(Block):
    """Pre-activation bottleneck block, stride on the 3x3 conv, expansion 4."""

    expansion = 4
    preact = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        width = int(self.planes * (self.base_width / 64.0)) * self.groups
        c = partial(conv, dtype=self.dtype, impl=self.impl)
        out = nn.relu(self.norm(name="bn1")(x, train))
        identity = _shortcut(self, x, train, preactivated=out)
        out = c(width, 1, name="conv1")(out)
        out = nn.relu(self.norm(name="bn2")(out, train))
        out = c(width, 3, self.stride, groups=self.groups, dilation=self.dilation, name="conv2")(
            out
        )
        out = nn.relu(self.norm(name="bn3")(out, train))
        out = c(self.planes * self.expansion, 1, name="conv3")(out)
        return out + identity


def _attend(block: Block, out: jax.Array) -> jax.Array:
    # ECA's kernel follows the unpruned width (timm prunes convs, not the attention)
    nominal = block.planes * block.expansion
    module = attention(block.attn, out.shape[-1], block.se_ratio, block.dtype, block.impl,
                       nominal_channels=nominal)  # fmt: skip
    return out if module is None else module(out)


def _residual_sum(block: Block, out: jax.Array, identity: jax.Array) -> jax.Array:
    if out.shape != identity.shape:  # timm's AvgPool2d anti-aliasing floors odd sizes
        why = (
            f"; with aa_layer={block.aa!r} every stride-2 stage needs an even input size "
            f"(timm's models fail the same way): use an image size divisible by 32"
            if block.aa
            else ""
        )
        raise ValueError(
            f"{'/'.join(block.scope.path)}: the residual branch gives {tuple(out.shape)} but the "
            f"shortcut {tuple(identity.shape)}{why}."
        )
    return out + identity


def _last_bn_init(zero: bool) -> Callable:
    return nn.initializers.zeros if zero else nn.initializers.ones


def _shortcut(
    block: Block, x: jax.Array, train: bool, preactivated: jax.Array | None = None
) -> jax.Array:
    """The identity path of ``block``: identity, projection (``downsample``), average-pool then
    projection (ResNet-D) or zero-padding.

    Post-activation blocks project with conv1x1 + BatchNorm (torchvision's ``downsample.0/1``;
    ResNet-D's ``downsample.1/2`` after a 2x2 average pool, timm's ``avg_down``); pre-activation
    blocks project the pre-activated input with a bare conv1x1.
    """
    features = block.widths[-1] if block.widths else block.planes * block.expansion
    if block.shortcut is None:
        return x
    if block.shortcut == "zero_pad":
        return zero_pad_shortcut(x, block.stride, features)
    if block.shortcut == "avg_pool":
        if block.dilation > 1:
            raise ValueError("the average-pool shortcut (ResNet-D) does not take dilation")
        pooled = avg_pool_ceil(x, block.stride) if block.stride > 1 else x
        c = conv(features, 1, dtype=block.dtype, impl=block.impl, name="downsample_1")
        return block.norm(name="downsample_2")(c(pooled), train)
    if block.preact:
        c = conv(features, 1, block.stride, dtype=block.dtype, impl=block.impl, name="downsample_0")
        return c(preactivated)
    kernel = block.down_kernel_size if block.stride > 1 else 1  # timm: 1x1 where not strided
    out = conv(features, kernel, block.stride, dtype=block.dtype, impl=block.impl,
               name="downsample_0")(x)  # fmt: skip
    return block.norm(name="downsample_1")(out, train)


class ResNet(nn.Module):
    """The generic ResNet: block type, stage sizes, widths, stem and shortcut kind.

    Attributes mirror torchvision's ``ResNet`` options (``num_classes``, ``zero_init_residual``,
    ``groups``, ``width_per_group``, ``replace_stride_with_dilation``) plus:

    - ``stem``: ``"imagenet"`` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), ``"deep"`` (timm's
      ResNet-C/D stem: three 3x3 convs of ``stem_width``, ``stem_width``, 2 x ``stem_width``
      channels, the first of stride 2, then BN, ReLU, 3x3/2 max-pool), ``"deep_tiered"``
      (timm's ResNet-T: the first conv 3/4 as wide) or ``"cifar"`` (3x3/1 conv, BN, ReLU;
      pre-activation nets keep the bare conv).
    - ``aa_layer``: timm's anti-aliased downsampling: every strided 3x3 conv runs at stride 1
      and is followed by ``"avg"`` (a 2x2 average pool: ``resnetaa*``) or ``"blur"`` (a
      binomial blur pool: ``resnetblur*``); the stem's max-pool becomes the average pool, or
      a stride-1 max-pool then the blur.
    - ``block_reduce_first``: the first conv of every block is this many times narrower
      (SENet-154); ``down_kernel_size``: the strided projection shortcut's kernel (SENet: 3).
    - ``block_widths``: every block's (conv1, conv2, conv3) output channels, for timm's pruned
      models (``ecaresnet50d_pruned``); ``None`` computes them from the stage widths.
    - ``stride_in_1x1``: bottlenecks stride their first 1x1 conv, not the 3x3 (ResNet v1 as
      first published; transformers' ``downsample_in_bottleneck``).
    - ``attn_layer``: channel attention in every block, timm's ``"se"`` (reduction
      ``se_ratio``) or ``"eca"`` (:mod:`resnet_flax.models.attention`); pre-activation blocks
      take none.
    - ``drop_path_rate``: timm's stochastic depth, rising linearly from 0 at the first block
      to this rate at the last (train mode needs a ``'dropout'`` rng when it is non-zero).
    - ``norm_layer``: ``"batch"`` (BatchNorm) or ``"group"`` (GroupNorm, 32 groups: timm's
      ``resnet50_gn``).
    - ``stem_pool``: the deep stem's ``"max"`` pool, or ``"conv"`` (a 3x3/2 conv, BN, ReLU:
      ResNet-RS).
    - ``shortcut``: ``"projection"`` (conv1x1 + BN, torchvision), ``"avg_pool"`` (2x2 average
      pool, then conv1x1 + BN: ResNet-D) or ``"zero_pad"`` (option A, He et al. 2016 4.2).
    - ``axis_name``: a mesh axis over which BatchNorm statistics are synchronised.
    - ``dtype``: the computation dtype (parameters and BatchNorm statistics stay float32).
    - ``impl``: which kernels run the convs, BatchNorms and max-pool: ``"plain"`` (the default:
      plain XLA, every JAX transform), ``"cpu"`` (faster on XLA:CPU, fewer transforms) or
      ``"auto"`` (``"cpu"`` on a CPU, else ``"plain"``); see :mod:`resnet_flax.models.layers`.
      The numbers are the same to float32 round-off.

    Input is NHWC; ``__call__(x, train)`` returns logits. Stage outputs are sown into the
    ``intermediates`` collection (see :func:`resnet_flax.extract_features`).
    """

    block: type[Block]
    stage_sizes: Sequence[int]
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: Literal["imagenet", "deep", "deep_tiered", "cifar"] = "imagenet"
    stem_width: int = 64
    shortcut: Shortcut = "projection"
    num_classes: int = 1000
    zero_init_residual: bool = False
    attn_layer: Attention | None = None
    se_ratio: float = 1 / 16
    drop_path_rate: float = 0.0
    norm_layer: Literal["batch", "group"] = "batch"
    stem_pool: Literal["max", "conv"] = "max"
    aa_layer: AntiAlias | None = None
    block_reduce_first: int = 1
    down_kernel_size: int = 1
    block_widths: Sequence[Widths] | None = None
    stride_in_1x1: bool = False
    groups: int = 1
    width_per_group: int = 64
    replace_stride_with_dilation: Sequence[bool] | None = None
    in_channels: int = 3
    axis_name: str | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    head: ClassVar[str] = "fc"  # the classifier layer, replaced when fine-tuning

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_options(self)
        check_images(x, type(self).__name__, self.in_channels)
        norm = make_norm(
            self.norm_layer, axis_name=self.axis_name, dtype=self.dtype, impl=self.impl
        )
        for option, choices in (
            ("stem", ("imagenet", "deep", "deep_tiered", "cifar")),
            ("stem_pool", ("max", "conv")),
            ("shortcut", ("projection", "avg_pool", "zero_pad")),
            ("aa_layer", (None, "avg", "blur")),
        ):
            if getattr(self, option) not in choices:
                raise ValueError(
                    f"{type(self).__name__}: {option} must be one of {choices}, not "
                    f"{getattr(self, option)!r}."
                    f"{did_you_mean(str(getattr(self, option)), [c for c in choices if c])}"
                )
        preact = self.block.preact
        if preact and (self.attn_layer is not None or self.drop_path_rate):
            raise ValueError(
                f"{type(self).__name__}: pre-activation blocks take no attn_layer or drop_path_rate"
            )
        x = x.astype(self.dtype)

        c = partial(conv, dtype=self.dtype, impl=self.impl)
        inplanes = self.stem_width
        if self.stem == "imagenet":
            x = c(self.stem_width, 7, 2, 3, name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x, train))
        elif self.stem in ("deep", "deep_tiered"):  # timm's conv1: (conv, bn, relu) x 2, conv
            first = 3 * (self.stem_width // 4) if self.stem == "deep_tiered" else self.stem_width
            x = nn.relu(norm(name="conv1_1")(c(first, 3, 2, 1, name="conv1_0")(x), train))
            x = nn.relu(norm(name="conv1_4")(c(self.stem_width, 3, 1, 1, name="conv1_3")(x), train))
            inplanes = 2 * self.stem_width
            x = nn.relu(norm(name="bn1")(c(inplanes, 3, 1, 1, name="conv1_6")(x), train))
        else:
            x = conv(self.stem_width, 3, 1, 1, dtype=self.dtype, impl=self.impl, name="conv1")(x)
            if not preact:
                x = nn.relu(norm(name="bn1")(x, train))
        if self.stem != "cifar":
            x = self._stem_pool(x, inplanes, norm, train)
        self.sow("intermediates", "stem", x)

        dilate = self.replace_stride_with_dilation or [False] * (len(self.stage_sizes) - 1)
        if self.aa_layer is not None and any(dilate):
            raise ValueError(f"{type(self).__name__}: aa_layer does not take dilated stages")
        if self.block_widths is not None and len(self.block_widths) != sum(self.stage_sizes):
            raise ValueError(
                f"{type(self).__name__}: block_widths has {len(self.block_widths)} entries for "
                f"{sum(self.stage_sizes)} blocks"
            )
        dilation, block_index, total_blocks = 1, 0, sum(self.stage_sizes)
        for i, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            stride, previous_dilation = (1 if i == 0 else 2), dilation
            if i > 0 and dilate[i - 1]:
                dilation, stride = dilation * stride, 1
            for j in range(num_blocks):
                needs_shortcut = j == 0 and (
                    stride != 1 or inplanes != planes * self.block.expansion
                )
                x = self.block(
                    planes,
                    norm,
                    stride=stride if j == 0 else 1,
                    dilation=previous_dilation if j == 0 else dilation,
                    groups=self.groups,
                    base_width=self.width_per_group,
                    shortcut=self.shortcut if needs_shortcut else None,
                    zero_init_residual=self.zero_init_residual,
                    attn=self.attn_layer,
                    se_ratio=self.se_ratio,
                    drop_path=self.drop_path_rate * block_index / max(total_blocks - 1, 1),
                    aa=self.aa_layer,
                    reduce_first=self.block_reduce_first,
                    stride_in_1x1=self.stride_in_1x1,
                    down_kernel_size=self.down_kernel_size,
                    widths=None
                    if self.block_widths is None
                    else tuple(self.block_widths[block_index]),
                    dtype=self.dtype,
                    impl=self.impl,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
                inplanes = planes * self.block.expansion  # nominal: pruned widths keep timm's plan
                block_index += 1
            self.sow("intermediates", f"layer{i + 1}", x)

        if preact:
            x = nn.relu(norm(name="bn_final")(x, train))
        x = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "pre_logits", x)
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=torch_linear_init(x.shape[-1]),
            bias_init=torch_linear_init(x.shape[-1]),
            name="fc",
        )(x)

    def _stem_pool(self, x: jax.Array, channels: int, norm: ModuleDef, train: bool) -> jax.Array:
        """The stem's downsampling (timm's ``maxpool``): a 3x3/2 max-pool; with ``stem_pool=
        "conv"`` a 3x3/2 conv, BN, ReLU (ResNet-RS: timm's ``replace_stem_pool``); either
        anti-aliased with ``aa_layer``."""
        if self.stem_pool == "conv":
            c = conv(channels, 3, 1 if self.aa_layer else 2, 1, dtype=self.dtype, impl=self.impl,
                     name="maxpool_0")  # fmt: skip
            x = c(x)
            if self.aa_layer is not None:
                x = anti_alias(self.aa_layer, x)
            return nn.relu(norm(name="maxpool_2" if self.aa_layer else "maxpool_1")(x, train))
        if self.aa_layer == "avg":
            return anti_alias("avg", x)
        if self.aa_layer == "blur":
            return anti_alias("blur", max_pool(x, 3, 1, 1, impl=self.impl))
        return max_pool(x, 3, 2, 1, impl=self.impl)
