"""Stage outputs of a model, read from what it sows into the ``intermediates`` collection."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax


def extract_features(
    model: nn.Module,
    variables: dict[str, Any],
    x: jax.Array,
    train: bool = False,
    rngs: dict[str, jax.Array] | None = None,
) -> dict[str, jax.Array]:
    """The stage outputs of ``model`` on the NHWC batch ``x``, by name.

    ResNets give ``stem``, ``layer1``.. ``layer4`` (``layer3`` for CIFAR ResNets) and
    ``pre_logits`` (the pooled features the classifier takes); timm's ResNetV2 the same, with
    ``stem_output`` for ``stem`` (a module of that name holds its weights); VGG gives
    ``features`` and ``pre_logits``. ``train=True`` normalises with batch statistics (the updated
    ``batch_stats`` are discarded); VGG's dropout then needs ``rngs={'dropout': key}``.
    """
    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
    _, state = model.apply(variables, x, train=train, mutable=mutable, rngs=rngs)
    return {name: values[0] for name, values in state["intermediates"].items()}
