"""LeNet-5 for 32x32 input: two 5x5 convs with 2x2 max-pools, then 120-84-classes."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.checks import check_images, check_options
from resnet_flax.models.layers import Impl, conv, max_pool, torch_flatten, torch_linear_init


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as it is usually trained today.
    ``impl`` as :class:`~resnet_flax.models.resnet.ResNet`'s."""

    num_classes: int = 10
    in_channels: int = 3
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    head: ClassVar[str] = "fc3"  # the classifier layer, replaced when fine-tuning

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no BatchNorm, no dropout
        check_options(self)
        check_images(x, "LeNet5", self.in_channels, exact_size=32)
        x = x.astype(self.dtype)
        for i, features in enumerate((6, 16), start=1):
            fan_in = x.shape[-1] * 25
            x = conv(
                features, 5, padding=0, use_bias=True, dtype=self.dtype,
                kernel_init=torch_linear_init(fan_in), impl=self.impl, name=f"conv{i}",
            )(x)  # fmt: skip
            x = max_pool(nn.relu(x), 2, 2, 0, impl=self.impl)
        x = torch_flatten(x)
        for i, features in enumerate((120, 84), start=1):
            x = nn.relu(self._dense(features, x.shape[-1], f"fc{i}")(x))
        self.sow("intermediates", "pre_logits", x)
        return self._dense(self.num_classes, x.shape[-1], "fc3")(x)

    def _dense(self, features: int, fan_in: int, name: str) -> nn.Dense:
        init = torch_linear_init(fan_in)
        return nn.Dense(features, dtype=self.dtype, kernel_init=init, bias_init=init, name=name)
