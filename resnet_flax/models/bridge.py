"""The models as NNX modules, through ``flax.nnx.bridge``, and back to linen variables.

``to_nnx(model, variables)`` gives a stateful module: ``module(x)`` evaluates, ``module(x,
train=True)`` trains and updates its BatchNorm statistics in place (no ``mutable`` to pass).
Intermediates are not collected (the stage outputs a ResNet sows would otherwise pile up, one
tuple entry per call). ``to_linen_variables(module)`` returns ``{"params", "batch_stats"}`` for
``model.apply``, ``export_torchvision`` and the checkpoints.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
from flax import nnx
from flax.nnx.bridge import variables as bridge_variables

TRAIN_MUTABLE = ["batch_stats"]  # what a training call updates; "intermediates" left out


class NNXModel(nnx.bridge.ToNNX):
    """A linen model as an NNX module whose training calls update its BatchNorm state."""

    def __call__(self, x: Any, train: bool = False, **kwargs: Any) -> Any:
        return super().__call__(x, train=train, mutable=TRAIN_MUTABLE if train else False, **kwargs)


def to_nnx(model: nn.Module, variables: dict[str, Any], seed: int = 0) -> NNXModel:
    """``model`` holding ``variables`` as an NNX module (``nnx.Param``, ``nnx.BatchStat``);
    ``seed`` feeds the ``'dropout'`` stream (VGG's dropout, drop-path)."""
    module = NNXModel(model, rngs=nnx.Rngs(params=seed, dropout=seed))
    for name, value in bridge_variables.linen_vars_to_nnx_attrs(dict(variables)).items():
        setattr(module, name, nnx.data(value))
    return module


def to_linen_variables(module: NNXModel) -> dict[str, Any]:
    """The module's state as linen variables: ``{"params": ..., "batch_stats": ...}``."""
    attrs = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith(("to_nnx__", "_pytree__"))
    }
    return bridge_variables.nnx_attrs_to_linen_vars(attrs)
