"""torchvision's VGG (with and without BatchNorm), layer for layer.

Layer names are torchvision's Sequential indices (``features.3`` is ``features_3``), so weights
port with a renaming and a transpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.checks import check_images, check_options
from resnet_flax.models.layers import (
    BatchNorm,
    Impl,
    adaptive_avg_pool,
    conv,
    max_pool,
    torch_flatten,
)

# torchvision's configurations: numbers are conv widths, "M" a 2x2 max-pool.
CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}  # fmt: skip


class VGG(nn.Module):
    """torchvision's ``VGG``: conv features, adaptive average pooling to 7x7, 3-layer classifier.

    ``dropout`` is torchvision's dropout probability in the classifier (train mode needs a
    ``'dropout'`` rng when it is non-zero). Any input of at least 32x32 is accepted.
    """

    cfg: Sequence[int | str]
    batch_norm: bool = False
    num_classes: int = 1000
    dropout: float = 0.5
    in_channels: int = 3
    axis_name: str | None = None
    dtype: Any = jnp.float32
    impl: Impl = "plain"

    head: ClassVar[str] = "classifier_6"  # the classifier layer, replaced when fine-tuning

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_options(self)
        check_images(x, "VGG", self.in_channels, min_size=32)
        x = x.astype(self.dtype)
        index = 0  # torchvision's index in ``features``: conv, [bn], relu and pool each count
        for v in self.cfg:
            if v == "M":
                x = max_pool(x, 2, 2, 0, impl=self.impl)
                index += 1
                continue
            x = conv(
                v, 3, use_bias=True, dtype=self.dtype, impl=self.impl, name=f"features_{index}"
            )(x)
            if self.batch_norm:
                x = BatchNorm(
                    axis_name=self.axis_name,
                    dtype=self.dtype,
                    impl=self.impl,
                    name=f"features_{index + 1}",
                )(x, train)
            x = nn.relu(x)
            index += 3 if self.batch_norm else 2
        self.sow("intermediates", "features", x)

        x = torch_flatten(adaptive_avg_pool(x, (7, 7)))
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            bias_init=nn.initializers.zeros,
            name=name,
        )
        for i in (0, 3):
            x = nn.relu(dense(4096, f"classifier_{i}")(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        self.sow("intermediates", "pre_logits", x)
        return dense(self.num_classes, "classifier_6")(x)
