"""A plain Flax linen ResNet, written the way the Flax ImageNet example writes it.

``nn.Conv`` with ``'SAME'``-style padding and ``nn.BatchNorm(use_running_average=not train)``,
compiled with ``jax.jit`` and XLA's default settings: the baseline a Flax user starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Block(nn.Module):
    filters: int
    conv: type
    norm: type
    strides: int = 1
    zero_pad: bool = False  # He et al.'s CIFAR option A: subsample and zero-pad, no projection

    def shortcut(self, residual, y):
        """The input, projected (1x1 conv + norm) when its shape differs from the output's."""
        if residual.shape != y.shape and self.zero_pad:
            residual = residual[:, :: self.strides, :: self.strides]
            extra = y.shape[-1] - residual.shape[-1]
            return jnp.pad(residual, ((0, 0),) * 3 + ((extra // 2, extra - extra // 2),))
        if residual.shape != y.shape:
            strides = (self.strides, self.strides)
            residual = self.norm()(self.conv(y.shape[-1], (1, 1), strides)(residual))
        return residual


class BasicBlock(Block):
    @nn.compact
    def __call__(self, x):
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm()(y)
        return nn.relu(self.shortcut(x, y) + y)


class BottleneckBlock(Block):
    @nn.compact
    def __call__(self, x):
        y = nn.relu(self.norm()(self.conv(self.filters, (1, 1))(x)))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
        y = nn.relu(self.norm()(y))
        y = self.norm()(self.conv(self.filters * 4, (1, 1))(y))
        return nn.relu(self.shortcut(x, y) + y)


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block_cls: type
    num_classes: int
    cifar_stem: bool = False
    widths: Sequence[int] = (64, 128, 256, 512)
    zero_pad: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       dtype=self.dtype)  # fmt: skip
        if self.cifar_stem:
            x = nn.relu(norm()(conv(self.widths[0], (3, 3))(x)))
        else:
            x = conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)])(x)
            x = nn.relu(norm()(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = 2 if i > 0 and j == 0 else 1
                block = self.block_cls(self.widths[i], conv, norm, strides, self.zero_pad)
                x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


MODELS = {
    "resnet18_cifar": partial(ResNet, (2, 2, 2, 2), BasicBlock, 10, cifar_stem=True),
    "resnet50": partial(ResNet, (3, 4, 6, 3), BottleneckBlock, 1000),
    # He et al.'s CIFAR ResNets: 6n+2 layers, widths 16/32/64, option-A shortcuts
    **{
        f"resnet{6 * n + 2}": partial(
            ResNet, (n, n, n), BasicBlock, 10, cifar_stem=True, widths=(16, 32, 64), zero_pad=True
        )
        for n in (3, 5, 7, 9, 18, 200)
    },
}
