"""The optimizer and the learning-rate schedules, built from a config.

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
from typing import Any

import jax
import optax

Schedule = Callable[[jax.Array | int], jax.Array]
SCHEDULES = ("cosine", "piecewise", "onecycle", "constant")
OPTIMIZERS = ("sgd", "adamw")


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
