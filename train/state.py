"""The train state: what a step updates and a checkpoint holds, and how a run's first one is
made (fresh, or from pretrained weights)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from resnet_flax.io import paths


class TrainState(train_state.TrainState):
    """``step, params, opt_state`` (+ static ``apply_fn, tx``) and BatchNorm ``batch_stats``."""

    batch_stats: Any = None


def new_train_state(
    model: nn.Module,
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    sharding: jax.sharding.Sharding | None = None,
) -> TrainState:
    """A step-0 state from initial ``variables`` (``params`` and optional ``batch_stats``),
    placed with ``sharding`` (the optimizer state included)."""

    def create(variables: dict[str, Any]) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
            opt_state=tx.init(variables["params"]),
        )

    return jax.jit(create, out_shardings=sharding)(variables)


def pretrained_variables(
    source: paths.PathLike,
    name: str,
    model: nn.Module,
    fresh: dict[str, Any],
    mesh: jax.sharding.Mesh,
    **options: Any,
) -> dict[str, Any]:
    """Variables to fine-tune from: a weights tag (``resnet34.tv_in1k``, fetched as
    :func:`resnet_flax.io.hub.load_pretrained` does), a torchvision ``.pth``/``.safetensors``
    file (through :func:`resnet_flax.io.convert.load_torchvision`) or one of our checkpoints (a
    directory;
    ``params`` and ``batch_stats`` only), local or on any filesystem :mod:`~resnet_flax.io.paths`
    serves. ``fresh`` are the model's initial variables: the head
    keeps them when the class count differs. Returns host arrays.
    """
    from resnet_flax.io.weights import by_tag

    from .checkpoint import load_variables  # (imports orbax)

    tag, source = str(source), paths.as_path(source)
    if not source.exists() and by_tag(tag) is not None:
        from resnet_flax.io.hub import load_pretrained

        _, loaded = load_pretrained(tag, num_classes=model.num_classes, **options)
    elif source.is_dir():
        loaded, _, _ = load_variables(source, mesh)
    else:
        from resnet_flax.io.convert import load_torchvision

        _, loaded = load_torchvision(name, source, num_classes=model.num_classes, **options)
    head = type(model).head
    params, batch_stats = dict(loaded["params"]), dict(loaded.get("batch_stats", {}))
    if head in params and shapes(params[head]) != shapes(fresh["params"][head]):
        params[head] = fresh["params"][head]
    variables = {"params": params, "batch_stats": batch_stats}
    if shapes(variables) != shapes(fresh):
        raise ValueError(
            f"pretrained={source}: its variables do not fit model {name} "
            f"(a different architecture or model_options)."
        )
    return jax.device_get(variables)


def shapes(tree: Any) -> Any:
    """Each leaf's shape and dtype: what two sets of variables must share to be swapped."""
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)
