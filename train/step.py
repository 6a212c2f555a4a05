"""The jitted train and eval steps: per-device code under ``jax.shard_map`` over ``batch``.

Each device sees its slice of the global batch. The loss is ``pmean``-ed over the mesh axis
*before* differentiation: under ``shard_map`` the gradient with respect to a replicated
parameter is the transpose of its implicit broadcast, a sum over devices, so the gradient of
the averaged loss is exactly the global-batch gradient and comes out replicated.

Input is either a batch of uint8 images and labels, or (for data sets that live on the
devices) a batch of int32 ``index`` values into a replicated uint8 ``data`` set; the gather,
augmentation and normalisation then all run inside the step.

Augmentation draws one key per example, ``fold_in(fold_in(seed_key, step), global_index)``,
so it does not depend on the number of devices and a resumed run draws the same keys.

BatchNorm: the model says how its statistics are taken. Built with ``axis_name='batch'``
(``sync_batch_norm``), they are over the whole global batch. Built without, each device
normalises with its own slice; the running statistics then differ per device and are averaged
with ``pmean`` after the step, so the state stays replicated.

Metrics are sums accumulated on the devices (no host sync per step); the loop reads them
every ``log_every_steps``. ``nonfinite_step`` records the first step whose loss or updated
parameters were NaN/inf, so the loop never saves such a state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from resnet_flax.models.layers import compiler_options

from .distributed import BATCH
from .state import TrainState

Metrics = dict[str, jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]  # (key, uint8 NHWC) -> uint8 NHWC
Normalize = Callable[[jax.Array], jax.Array]  # uint8 NHWC -> float NHWC

_DROPOUT_STREAM = 1  # folded into the step key so dropout and augmentation keys differ
TOP5_MIN_CLASSES = 100  # evaluation counts top-5 accuracy from this many classes on


def train_metrics_zeros() -> Metrics:
    """An empty train-metrics accumulator."""
    sums = {name: jnp.zeros((), jnp.float32) for name in ("loss", "correct", "count")}
    return sums | {"nonfinite_step": jnp.full((), -1, jnp.int32)}


def eval_metrics_zeros(num_classes: int) -> Metrics:
    """An empty eval-metrics accumulator (with ``correct5`` from :data:`TOP5_MIN_CLASSES`
    classes on)."""
    top5 = num_classes >= TOP5_MIN_CLASSES
    names = ("loss", "correct", "count") + (("correct5",) if top5 else ())
    return {name: jnp.zeros((), jnp.float32) for name in names}


def _inputs(batch: dict[str, jax.Array], data: dict[str, jax.Array] | None):
    """The local uint8 images and int32 labels, gathered from ``data`` when given indices."""
    if "index" in batch:
        return data["image"][batch["index"]], data["label"][batch["index"]]
    return batch["image"], batch["label"]


def _global_index(local_size: int) -> jax.Array:
    """The position of each local example in the global batch."""
    return jax.lax.axis_index(BATCH) * local_size + jnp.arange(local_size)


def augment_per_example(augment: Augment, key: jax.Array, images: jax.Array) -> jax.Array:
    """Apply ``augment`` with one key per example, derived from its global batch position."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(_global_index(images.shape[0]))
    return jax.vmap(lambda k, image: augment(k, image[None])[0])(keys, images)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy in float32, with optional label smoothing."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def synced_batch_norm(model: nn.Module) -> bool:
    """Whether ``model``'s BatchNorm statistics span the ``batch`` axis (else per device)."""
    axis_name = getattr(model, "axis_name", None)
    if axis_name not in (None, BATCH):
        raise ValueError(
            f"the model's BatchNorm axis_name is {axis_name!r}; the steps run over the mesh "
            f"axis {BATCH!r}: build it with axis_name={BATCH!r} (synced) or None (per device)."
        )
    return axis_name is not None


def make_train_step(
    mesh: Mesh,
    model: nn.Module,
    *,
    num_classes: int,
    normalize: Normalize,
    augment: Augment | None = None,
    label_smoothing: float = 0.0,
    seed: int = 0,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """``step(state, metrics, batch, data) -> (state, metrics)``, jitted over ``mesh``.

    ``state`` and ``metrics`` are replicated and donated; ``batch`` is sharded along ``batch``;
    ``data`` is the replicated on-device data set (or ``None`` when ``batch`` holds images).
    BatchNorm statistics are synced or per device as ``model`` is built
    (:func:`synced_batch_norm`).
    """
    base_key = jax.random.key(seed)
    synced = synced_batch_norm(model)

    def local_step(state: TrainState, metrics: Metrics, batch, data):
        images, labels = _inputs(batch, data)
        step_key = jax.random.fold_in(base_key, state.step)
        if augment is not None:
            images = augment_per_example(augment, step_key, images)
        x = normalize(images)
        dropout_key = jax.random.fold_in(
            jax.random.fold_in(step_key, _DROPOUT_STREAM), jax.lax.axis_index(BATCH)
        )

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
            return jax.lax.pmean(loss, BATCH), (logits, updates["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        if not synced:
            batch_stats = jax.tree.map(_pmean_floats, batch_stats)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

        global_size = labels.shape[0] * jax.lax.axis_size(BATCH)
        correct = jax.lax.psum(jnp.sum(jnp.argmax(logits, -1) == labels), BATCH)
        finite = jnp.isfinite(loss) & _all_finite(new_state.params)
        first_bad = (metrics["nonfinite_step"] < 0) & ~finite
        new_metrics = {
            "loss": metrics["loss"] + loss * global_size,
            "correct": metrics["correct"] + correct.astype(jnp.float32),
            "count": metrics["count"] + global_size,
            "nonfinite_step": jnp.where(first_bad, state.step + 1, metrics["nonfinite_step"]),
        }
        return new_state, new_metrics

    sharded = jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(P(), P(), P(BATCH), P()),
        out_specs=(P(), P()),
    )
    return jax.jit(sharded, donate_argnums=(0, 1), compiler_options=_options(model))


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _pmean_floats(x: jax.Array) -> jax.Array:
    """Average per-device running statistics; integer counters are identical already."""
    return jax.lax.pmean(x, BATCH) if jnp.issubdtype(x.dtype, jnp.floating) else x


def make_eval_step(
    mesh: Mesh,
    model: nn.Module,
    *,
    num_classes: int,
    normalize: Normalize,
    flip_tta: bool = False,
) -> Callable[..., Metrics]:
    """``step(variables, metrics, batch, data) -> metrics``: masked sums over an eval batch.

    ``variables`` are the replicated ``params`` and ``batch_stats``; ``batch["mask"]`` marks
    the real examples of a padded last batch. With ``flip_tta`` the prediction averages the
    softmax of each image and its horizontal flip. ``correct5`` (top-5) is counted as
    :func:`eval_metrics_zeros` sets it up.
    """
    top5 = "correct5" in eval_metrics_zeros(num_classes)

    def local_step(variables: dict[str, Any], metrics: Metrics, batch, data):
        images, labels = _inputs(batch, data)
        x = normalize(images)

        def log_probs(inputs):
            logits = model.apply(variables, inputs, train=False)
            return jax.nn.log_softmax(logits.astype(jnp.float32))

        scores = log_probs(x)
        if flip_tta:
            scores = jnp.log((jnp.exp(scores) + jnp.exp(log_probs(x[:, :, ::-1]))) / 2)
        mask = batch["mask"].astype(jnp.float32)
        loss = -jnp.take_along_axis(scores, labels[:, None], axis=-1)[:, 0]
        sums = {
            "loss": jnp.sum(loss * mask),
            "correct": jnp.sum((jnp.argmax(scores, -1) == labels) * mask),
            "count": jnp.sum(mask),
        }
        if top5:
            in_top5 = jnp.any(jax.lax.top_k(scores, 5)[1] == labels[:, None], axis=-1)
            sums["correct5"] = jnp.sum(in_top5 * mask)
        return {k: metrics[k] + jax.lax.psum(v, BATCH) for k, v in sums.items()}

    sharded = jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(P(), P(), P(BATCH), P()),
        out_specs=P(),
    )
    return jax.jit(sharded, donate_argnums=(1,), compiler_options=_options(model))


def _options(model: nn.Module) -> dict[str, Any] | None:
    """The compiler options of the model's kernels (the CPU kernels' on a CPU, with the
    trainer's default ``kernels='auto'``; XLA's defaults for ``plain``)."""
    return compiler_options(getattr(model, "impl", "plain"))
