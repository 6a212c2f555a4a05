"""What ``python -m train`` runs: :func:`train_and_evaluate` and :func:`evaluate`.

The loop is a function of the global step alone: the data position is the step, the
in-memory shuffle is ``epoch_permutation(seed, epoch)`` and augmentation keys fold in the
step, so a run resumed from a checkpoint (mid-epoch included) continues exactly as if it had
never stopped; the on-device metric sums are checkpointed too.

- Logging: every ``log_every_steps`` the metric sums are read (the only host sync), a
  ``train`` line is written and checked for NaN/inf.
- Evaluation at the end of every ``eval_every_epochs``-th epoch and of training.
- Checkpoints every ``checkpoint_every_steps`` (0: every epoch), at evaluations, at the end,
  at ``max_steps`` and on SIGTERM/SIGINT (saved at the next step boundary, then exit; a second
  Ctrl-C aborts at once). ``max_steps`` stops the run as an interruption would: the same
  command with a larger (or no) ``max_steps`` resumes it.
- A non-finite loss stops training with :class:`TrainingDiverged`; the state is not saved,
  so the last checkpoint is the last good one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from resnet_flax import create_model
from train import parallel
from train.checkpoint import CheckpointError, Checkpoints, abstract_tree, load_variables, resolve
from train.data import NORMALIZATION, augment_cifar, is_in_memory, load_arrays, normalize
from train.metrics import MetricsWriter, Progress
from train.state import TrainState, create_train_state, make_optimizer, make_schedule
from train.step import eval_metrics_zeros, make_eval_step, make_train_step, train_metrics_zeros

_INIT_PRNG = "rbg"  # XLA's RngBitGenerator: initialising a model compiles ~4x faster


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite."""


# ---------------------------------------------------------------------------- building blocks


def _data_dir(config: Any) -> str | None:
    return config.data_dir or None


def _open_input(config: Any, mesh: Mesh, split: str, batch_size: int, *, train: bool):
    """The split as an on-device :class:`ArrayInput` or a grain :class:`StreamInput`."""
    if is_in_memory(config.dataset, config.image_size):
        dataset = load_arrays(
            config.dataset,
            _data_dir(config),
            split,
            config.image_size,
            num_classes=config.num_classes or None,
            seed=config.seed,
        )
        return parallel.ArrayInput(mesh, dataset, batch_size, config.seed)
    from train.data import stream_length

    args = dict(
        dataset=config.dataset,
        data_dir=_data_dir(config),
        split=split,
        image_size=config.image_size,
        seed=config.seed,
        num_workers=config.num_workers,
    )
    size = stream_length(config.dataset, _data_dir(config), split)
    return parallel.StreamInput(mesh, args, batch_size, size)


def _num_classes(config: Any, train_input: Any) -> int:
    """``config.num_classes``, or the data set's own count when it is 0."""
    if config.num_classes:
        return config.num_classes
    if getattr(train_input, "num_classes", None):
        return train_input.num_classes
    if config.dataset == "imagenet2012":
        return 1000
    from train.data.folder import list_folder
    from train.data.splits import parse_split

    return len(list_folder(_data_dir(config), parse_split(config.train_split)[0]).class_names)


def _model(config: Any, num_classes: int) -> nn.Module:
    axis_name = parallel.BATCH if config.sync_batch_norm else None
    return create_model(
        config.model,
        num_classes=num_classes,
        dtype=jnp.dtype(config.dtype),
        axis_name=axis_name,
        **config.model_options,
    )


def _init_variables(model: nn.Module, config: Any, mesh: Mesh) -> dict[str, Any]:
    """Initial variables, replicated; a model that cannot take the image size fails here."""
    shape = (1, config.image_size, config.image_size, getattr(model, "in_channels", 3))
    key = jax.random.key(config.seed, impl=_INIT_PRNG)
    try:
        init = jax.jit(
            lambda k: model.init(k, jnp.zeros(shape, jnp.float32), train=False),
            out_shardings=parallel.replicated(mesh),
        )
        variables = init(key)
    except ValueError as error:  # the model's own input checks
        raise ValueError(
            f"image_size={config.image_size} with model {config.model}: {error}"
        ) from None
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def _new_state(
    model: nn.Module, variables: dict[str, Any], tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    build = jax.jit(
        lambda v: create_train_state(model.apply, v, tx), out_shardings=parallel.replicated(mesh)
    )
    return build(variables)


def _pretrained(config: Any, model: nn.Module, fresh: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Variables from ``config.pretrained``: a torchvision file or one of our checkpoints.

    The head keeps its fresh initialisation when its shape differs (a new class count).
    """
    source = Path(config.pretrained).expanduser()
    if source.is_dir():
        loaded, _, _ = load_variables(source, mesh)
    else:
        from resnet_flax.convert import load_torchvision

        options = dict(config.model_options)
        _, loaded = load_torchvision(
            config.model, str(source), num_classes=model.num_classes, **options
        )
    head = type(model).head
    params, batch_stats = dict(loaded["params"]), dict(loaded.get("batch_stats", {}))
    if head in params and _shapes(params[head]) != _shapes(fresh["params"][head]):
        params[head] = fresh["params"][head]
    variables = {"params": params, "batch_stats": batch_stats}
    if _shapes(variables) != _shapes(fresh):
        raise ValueError(
            f"pretrained={config.pretrained}: its variables do not fit model {config.model} "
            f"(different architecture or model_options)."
        )
    return parallel.replicate(mesh, jax.device_get(variables))


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def _normalizer(config: Any):
    """uint8 images -> the model's input: the data set's mean/std, in ``config.dtype``."""
    mean, std = NORMALIZATION[config.dataset]
    return lambda images: normalize(images, mean, std, jnp.dtype(config.dtype))


def _run_eval(eval_step, variables, eval_input, top5: bool, mesh: Mesh) -> dict[str, float]:
    """Loss, accuracy (and top-5) over every example of the eval split."""
    sums = parallel.replicate(mesh, eval_metrics_zeros(top5))
    for batch in eval_input.eval_batches():
        sums = eval_step(variables, sums, batch, eval_input.data)
    sums = jax.device_get(sums)
    count = max(float(sums["count"]), 1.0)
    result = {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}
    if top5:
        result["top5"] = float(sums["correct5"]) / count
    return result


class _StopRequest:
    """SIGTERM/SIGINT set a flag (the loop saves and exits at the next step boundary)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum
        name = signal.Signals(signum).name
        print(f"\n{name}: saving a checkpoint at the next step, then exiting.", flush=True)
        if signum == signal.SIGINT:  # a second Ctrl-C aborts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


# ------------------------------------------------------------------------------------ training


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint), evaluating as set.

    Returns ``{"step", "epoch", "interrupted", "train", "eval", "best_accuracy", "best_step"}``;
    ``interrupted`` is True when a signal or ``max_steps`` stopped training before the end.
    """
    workdir = Path(workdir)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's per-save chatter
    parallel.use_cpu_cores(config.batch_size, config.eval_batch_size)
    parallel.initialize_distributed()
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, "batch_size")
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")

    train_input = _open_input(config, mesh, config.train_split, config.batch_size, train=True)
    eval_input = _open_input(config, mesh, config.eval_split, config.eval_batch_size, train=False)
    steps_per_epoch = train_input.steps_per_epoch
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the {train_input.size} examples of "
            f"{config.train_split!r}: lower batch_size."
        )
    total_steps = config.num_epochs * steps_per_epoch
    stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    num_classes = _num_classes(config, train_input)

    model = _model(config, num_classes)
    schedule = make_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, schedule, head=getattr(type(model), "head", None))
    variables = _init_variables(model, config, mesh)
    state = _new_state(model, variables, tx, mesh)
    sums = parallel.replicate(mesh, train_metrics_zeros())

    checkpoints = Checkpoints(
        workdir / "checkpoints", keep=config.keep_checkpoints, keep_best=config.keep_best
    )
    meta: dict[str, Any] = {"best_accuracy": None, "best_step": None}
    if checkpoints.latest_step() is not None:
        target = abstract_tree({"train_state": state, "metrics": sums}, mesh)
        restored, meta, _ = checkpoints.restore(target, quarantine=True)
        _check_resume(meta, config, steps_per_epoch)
        state, sums = restored["train_state"], restored["metrics"]
    elif config.pretrained:
        state = _new_state(model, _pretrained(config, model, variables, mesh), tx, mesh)
    del variables

    normalizer = _normalizer(config)
    train_step = make_train_step(
        mesh,
        num_classes=num_classes,
        normalize=normalizer,
        augment=augment_cifar if config.augment and train_input.data is not None else None,
        label_smoothing=config.label_smoothing,
        sync_batch_norm=config.sync_batch_norm,
        seed=config.seed,
    )
    eval_step = make_eval_step(
        mesh, model.apply, num_classes=num_classes, normalize=normalizer, flip_tta=config.flip_tta
    )
    top5 = num_classes >= 100

    step = int(jax.device_get(state.step))
    writer = MetricsWriter(workdir, resume_step=step or None)
    progress = Progress(
        stop_step, step, config.name or config.model, log_every_steps=config.log_every_steps
    )
    result: dict[str, Any] = {"train": None, "eval": None}
    interrupted = False
    window_start, window_step = time.perf_counter(), step
    batches = train_input.train_batches(step)

    def save(at: int, accuracy: float | None = None) -> None:
        _check_finite(sums, checkpoints)
        meta.update(
            step=at,
            epoch=at / steps_per_epoch,
            steps_per_epoch=steps_per_epoch,
            batch_size=config.batch_size,
            config=config.name,
            model=config.model,
        )
        checkpoints.save(at, {"train_state": state, "metrics": sums}, dict(meta), accuracy)

    try:
        with _StopRequest() as stop_request:
            while step < stop_step:
                state, sums = train_step(state, sums, next(batches), train_input.data)
                step += 1
                epoch, epoch_end = step / steps_per_epoch, step % steps_per_epoch == 0
                log_now = step % config.log_every_steps == 0 or step == total_steps
                if log_now:
                    line = _train_line(sums, checkpoints, schedule, step, window_start)
                    sums = parallel.replicate(mesh, train_metrics_zeros())
                    line["images_per_sec"] = (
                        (step - window_step) * config.batch_size / line.pop("seconds")
                    )
                    result["train"] = line
                    writer.write("train", step, epoch, **line)
                    window_start, window_step = time.perf_counter(), step
                progress.update(step, **(result["train"] if log_now else {}))

                accuracy = None
                every_eval = config.eval_every_epochs * steps_per_epoch
                if epoch_end and (step % every_eval == 0 or step == total_steps):
                    variables = {"params": state.params, "batch_stats": state.batch_stats}
                    result["eval"] = _run_eval(eval_step, variables, eval_input, top5, mesh)
                    accuracy = result["eval"]["accuracy"]
                    writer.write("eval", step, epoch, **result["eval"])
                    if meta["best_accuracy"] is None or accuracy > meta["best_accuracy"]:
                        meta.update(best_accuracy=accuracy, best_step=step)
                    window_start = time.perf_counter()  # eval time is not training throughput

                stopping = _stop_requested(stop_request, step, config.log_every_steps)
                every = config.checkpoint_every_steps
                due = (step % every == 0) if every else epoch_end
                if due or accuracy is not None or stopping or step == stop_step:
                    save(step, accuracy)
                if stopping:
                    interrupted = True
                    break
            interrupted = interrupted or step < total_steps
    finally:
        checkpoints.wait()
        checkpoints.close()
        progress.close()
        writer.close()
    return {
        "step": step,
        "epoch": step / steps_per_epoch,
        "interrupted": interrupted,
        "best_accuracy": meta["best_accuracy"],
        "best_step": meta["best_step"],
        **result,
    }


def _check_resume(meta: dict[str, Any], config: Any, steps_per_epoch: int) -> None:
    """A checkpoint's data position only means the same thing with the same batch size."""
    if meta.get("batch_size", config.batch_size) != config.batch_size:
        raise CheckpointError(
            f"the checkpoint in this workdir was trained with batch_size={meta['batch_size']}; "
            f"resume with that batch size, or use a new workdir for batch_size="
            f"{config.batch_size}."
        )
    if meta.get("steps_per_epoch", steps_per_epoch) != steps_per_epoch:
        raise CheckpointError(
            f"the checkpoint in this workdir had {meta['steps_per_epoch']} steps per epoch, "
            f"this config has {steps_per_epoch}: the training split differs. Use a new workdir."
        )


def _stop_requested(stop_request: _StopRequest, step: int, every: int) -> bool:
    """Whether to stop now; with several processes they agree at logging steps only."""
    if jax.process_count() == 1:
        return stop_request.signal is not None
    return step % every == 0 and parallel.any_process(stop_request.signal is not None)


def _check_finite(sums: dict[str, jax.Array], checkpoints: Checkpoints) -> None:
    bad = int(jax.device_get(sums["nonfinite_step"]))
    if bad >= 0:
        checkpoints.wait()
        last = checkpoints.latest_step()
        keep = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint"
        raise TrainingDiverged(
            f"the training loss or the parameters became NaN/inf at step {bad}; stopped "
            f"without saving ({keep} "
            f"in {checkpoints.directory}). Lower learning_rate, add warmup_epochs, or use "
            f"dtype='float32'."
        )


def _train_line(
    sums: dict[str, jax.Array], checkpoints: Checkpoints, schedule, step: int, start: float
) -> dict[str, float]:
    """The ``train`` line of the logging window that ends at ``step``."""
    _check_finite(sums, checkpoints)
    host = jax.device_get(sums)
    count = max(float(host["count"]), 1.0)
    line = {
        "loss": float(host["loss"]) / count,
        "accuracy": float(host["correct"]) / count,
        "lr": float(schedule(step - 1)),
        "seconds": max(time.perf_counter() - start, 1e-9),
    }
    return line


# ---------------------------------------------------------------------------------- evaluation


def evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Evaluate the latest checkpoint of ``workdir`` (or ``config.checkpoint``) on eval_split.

    Every example is seen exactly once; an ``eval`` line is appended to metrics.jsonl.
    Returns the metrics with the checkpoint's ``step`` and ``epoch``.
    """
    workdir = Path(workdir)
    logging.getLogger("absl").setLevel(logging.ERROR)
    parallel.use_cpu_cores(config.eval_batch_size)
    parallel.initialize_distributed()
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
    source = config.checkpoint or workdir
    if not config.checkpoint and not (workdir / "checkpoints").is_dir():
        raise CheckpointError(
            f"no checkpoint in {workdir / 'checkpoints'}: train first, or set "
            f"--config.checkpoint=/path/to/checkpoints."
        )
    directory, _ = resolve(source)
    variables, meta, step = load_variables(source, mesh)
    eval_input = _open_input(config, mesh, config.eval_split, config.eval_batch_size, train=False)
    num_classes = _num_classes(config, eval_input)
    model = _model(config, num_classes)
    fresh = jax.eval_shape(
        lambda: model.init(
            jax.random.key(0, impl=_INIT_PRNG),
            jnp.zeros((1, config.image_size, config.image_size, 3)),
        )
    )
    expected = {"params": fresh["params"], "batch_stats": fresh.get("batch_stats", {})}
    if _shapes(variables) != _shapes(expected):
        raise CheckpointError(
            f"the checkpoint in {directory} does not fit model {config.model} with "
            f"num_classes={num_classes}: evaluate with the config it was trained with."
        )
    eval_step = make_eval_step(
        mesh, model.apply, num_classes=num_classes, normalize=_normalizer(config),
        flip_tta=config.flip_tta,
    )  # fmt: skip
    metrics = _run_eval(eval_step, variables, eval_input, num_classes >= 100, mesh)
    epoch = step / meta["steps_per_epoch"] if meta.get("steps_per_epoch") else 0.0
    with MetricsWriter(workdir) as writer:
        writer.write("eval", step, epoch, **metrics)
    return {"step": step, "epoch": epoch, **metrics}
