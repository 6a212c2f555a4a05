"""The train state, the optimizer and the learning-rate schedules, built from a config.

Choices made here (documented in one place):

- SGD uses PyTorch's coupled L2 weight decay: ``optax.add_decayed_weights`` before
  ``optax.sgd`` (``grad + wd * param``, then momentum/Nesterov as ``torch.optim.SGD``).
  AdamW uses ``optax.adamw``'s decoupled decay.
- ``decay_norm_and_bias=False`` excludes every 1-D leaf (BatchNorm scale/bias, conv and dense
  biases) from weight decay.
- ``freeze_backbone``: only the model's head (``model.head``: ``fc``, ``classifier_6``,
  ``fc3``) is updated; the rest gets zero updates (``optax.set_to_zero``). BatchNorm keeps
  running in train mode, so the backbone's running statistics still adapt to the new data:
  what PyTorch users get with ``requires_grad=False`` and ``model.train()``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

Schedule = Callable[[jax.Array | int], jax.Array]
SCHEDULES = ("cosine", "piecewise", "onecycle", "constant")
OPTIMIZERS = ("sgd", "adamw")


class TrainState(train_state.TrainState):
    """``step, params, opt_state`` (+ static ``apply_fn, tx``) and BatchNorm ``batch_stats``."""

    batch_stats: Any = None


def make_schedule(config: Any, steps_per_epoch: int) -> Schedule:
    """The learning rate as a function of the global step (optax schedules).

    ``warmup_epochs`` of linear warmup from 0 precede ``cosine``, ``piecewise`` and ``constant``;
    ``onecycle`` uses them as its rising phase (default 30% of training when 0).
    ``lr_boundaries`` are in epochs from the start of training.
    """
    name = config.lr_schedule
    lr = float(config.learning_rate)
    total = max(int(config.num_epochs * steps_per_epoch), 1)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)
    if name == "onecycle":
        pct = warmup / total if warmup > 0 else 0.3
        return optax.cosine_onecycle_schedule(total, lr, pct_start=pct)
    if name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)
    if name == "piecewise":
        scales: dict[int, float] = {}
        for epoch in config.lr_boundaries:
            boundary = int(round(epoch * steps_per_epoch)) - warmup
            scales[boundary] = scales.get(boundary, 1.0) * float(config.lr_decay_factor)
        main = optax.piecewise_constant_schedule(lr, scales)
    elif name == "constant":
        main = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown lr_schedule {name!r}; choose one of {', '.join(SCHEDULES)}.")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params: Any) -> Any:
    """True for the leaves weight decay applies to: every leaf of rank > 1 (kernels)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: Any, schedule: Schedule, head: str | None = None
) -> optax.GradientTransformation:
    """SGD (coupled L2, momentum, Nesterov) or AdamW, optionally training ``head`` only."""
    mask = None if config.decay_norm_and_bias else decay_mask
    wd = float(config.weight_decay)
    if config.optimizer == "sgd":
        momentum = float(config.momentum) or None
        tx = optax.chain(
            optax.add_decayed_weights(wd, mask),
            optax.sgd(schedule, momentum=momentum, nesterov=bool(config.nesterov)),
        )
    elif config.optimizer == "adamw":
        tx = optax.adamw(schedule, weight_decay=wd, mask=mask)
    else:
        raise ValueError(
            f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}."
        )
    if not config.freeze_backbone:
        return tx
    if head is None:
        raise ValueError("freeze_backbone needs a model with a named head layer.")

    def labels(params: Any) -> dict[str, Any]:
        if head not in params:
            raise ValueError(f"freeze_backbone: the model has no head layer {head!r}.")
        return {
            name: jax.tree.map(lambda _, n=name: "head" if n == head else "frozen", subtree)
            for name, subtree in params.items()
        }

    return optax.multi_transform({"head": tx, "frozen": optax.set_to_zero()}, labels)


def create_train_state(
    apply_fn: Callable, variables: dict[str, Any], tx: optax.GradientTransformation
) -> TrainState:
    """A step-0 state from initial ``variables`` (``params`` and optional ``batch_stats``)."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=apply_fn,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        opt_state=tx.init(variables["params"]),
    )


def cross_entropy(
    logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def init_variables(
    model: nn.Module, image_size: int, seed: int, sharding: jax.sharding.Sharding
) -> dict[str, Any]:
    """A model's initial ``params`` and ``batch_stats``, placed with ``sharding``.

    Keys are XLA RngBitGenerator (``rbg``) keys: a model's initialiser compiles ~4x faster
    than with threefry. A model that cannot take ``image_size`` raises its own ValueError.
    """
    x = jnp.zeros((1, image_size, image_size, getattr(model, "in_channels", 3)), jnp.float32)
    init = jax.jit(lambda key: model.init(key, x, train=False), out_shardings=sharding)
    variables = init(jax.random.key(seed, impl="rbg"))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def new_train_state(
    model: nn.Module,
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    sharding: jax.sharding.Sharding,
) -> TrainState:
    """:func:`create_train_state` placed with ``sharding`` (the optimizer state included)."""
    build = jax.jit(lambda v: create_train_state(model.apply, v, tx), out_shardings=sharding)
    return build(variables)


def pretrained_variables(
    source: str | Path,
    name: str,
    model: nn.Module,
    fresh: dict[str, Any],
    mesh: jax.sharding.Mesh,
    **options: Any,
) -> dict[str, Any]:
    """Variables to fine-tune from: a torchvision ``.pth``/``.safetensors`` file (through
    :func:`resnet_flax.convert.load_torchvision`) or one of our checkpoints (a directory;
    ``params`` and ``batch_stats`` only). ``fresh`` are the model's initial variables: the head
    keeps them when the class count differs. Returns host arrays.
    """
    from train.checkpoint import load_variables  # (imports orbax)

    source = Path(source).expanduser()
    if source.is_dir():
        loaded, _, _ = load_variables(source, mesh)
    else:
        from resnet_flax.convert import load_torchvision

        _, loaded = load_torchvision(name, str(source), num_classes=model.num_classes, **options)
    head = type(model).head
    params, batch_stats = dict(loaded["params"]), dict(loaded.get("batch_stats", {}))
    if head in params and _shapes(params[head]) != _shapes(fresh["params"][head]):
        params[head] = fresh["params"][head]
    variables = {"params": params, "batch_stats": batch_stats}
    if _shapes(variables) != _shapes(fresh):
        raise ValueError(
            f"pretrained={source}: its variables do not fit model {name} "
            f"(a different architecture or model_options)."
        )
    return jax.device_get(variables)


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)
