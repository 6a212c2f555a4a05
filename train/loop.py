"""What the trainer runs: :func:`train_and_evaluate` and :func:`evaluate`.

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
- A NaN/inf loss or parameter stops training with :class:`TrainingDiverged`; that state is
  never saved, so the last checkpoint is the last good one.

:func:`build` makes what both commands share from the config: the mesh, the data, the model
(the one place ``sync_batch_norm`` is read) and the evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from resnet_flax.io import paths
from resnet_flax.models.registry import create_model, init_variables, model_options

from . import distributed
from .checkpoint import (
    CheckpointError,
    Checkpoints,
    abstract_tree,
    load_variables,
    quiet_background_failures,
    read_meta,
    resolve,
)
from .config import save_config
from .data import (
    ArrayDataset,
    DataError,
    augment_cifar,
    dataset_spec,
    default_num_workers,
    load_arrays,
    normalize,
    stream_info,
)
from .data.errors import require_dir
from .data.request import StreamInfo, StreamSpec
from .feed import ArrayInput, StreamInput
from .lock import WorkdirLock
from .metrics import MetricsWriter, Progress
from .optim import make_optimizer, make_schedule
from .state import new_train_state, pretrained_variables, shapes
from .step import (
    eval_metrics_zeros,
    make_eval_step,
    make_train_step,
    train_metrics_zeros,
)

Input = ArrayInput | StreamInput


class TrainingDiverged(ValueError):
    """The loss or the parameters became NaN or infinite."""


# ------------------------------------------------------------------------- data, model, eval


def _data_dir(config: Any) -> str | None:
    return config.data_dir or None


def _load(config: Any, split: str, class_names: Sequence[str] | None = None) -> ArrayDataset | None:
    """A split held in memory (host numpy arrays), or None for a streamed data set."""
    if not dataset_spec(config.dataset).in_memory(config.image_size):
        return None
    return load_arrays(
        config.dataset,
        _data_dir(config),
        split,
        config.image_size,
        num_classes=config.num_classes or None,
        seed=config.seed,
        class_names=class_names,
    )


def _input(
    config: Any,
    mesh: Mesh,
    split: str,
    data: ArrayDataset | StreamInfo,
    batch_size: int,
) -> Input:
    """The split as an on-device :class:`ArrayInput` or a grain :class:`StreamInput`."""
    if isinstance(data, ArrayDataset):
        return ArrayInput(mesh, data, batch_size, config.seed)
    workers = config.num_workers
    spec = StreamSpec(
        dataset=config.dataset,
        data_dir=_data_dir(config),
        split=split,
        image_size=config.image_size,
        augment=config.augment,
        seed=config.seed,
        num_workers=workers if workers >= 0 else default_num_workers(jax.local_device_count()),
        class_names=data.class_names,
        skip_bad_images=config.skip_bad_images,
    )
    return StreamInput(mesh, spec, batch_size, data.size, data.num_classes)


def check_before_run(config: Any, workdir: paths.PathLike | None = None) -> None:
    """What can be checked before any data is read: remote paths' services answer, a data set
    read from files has its data_dir, and the batch sizes split over the devices
    (multi-process JAX started, as :func:`_start` does)."""
    for path in (workdir, config.data_dir, config.pretrained, config.checkpoint):
        if path:
            paths.check_reachable(path)
    spec = dataset_spec(config.dataset)
    if spec.layout:
        require_dir(_data_dir(config), f"dataset={config.dataset!r}", f"It holds {spec.layout}.")
    distributed.initialize_distributed(config.distributed)
    _check_batch_sizes(config)


def _check_batch_sizes(config: Any) -> None:
    for name in ("batch_size", "eval_batch_size"):
        distributed.check_batch_size(config[name], name)


def _start(config: Any) -> Mesh:
    """Multi-process start-up, the mesh; the batch sizes checked against it."""
    distributed.initialize_distributed(config.distributed)
    mesh = distributed.make_mesh()
    _check_batch_sizes(config)
    return mesh


def _model(config: Any, num_classes: int) -> nn.Module:
    """The config's model, computing with the kernels ``config.kernels`` names (``auto``: the
    CPU kernels on a CPU); its BatchNorm statistics span the ``batch`` axis when
    ``sync_batch_norm`` (the train step follows the model)."""
    options = dict(num_classes=num_classes, dtype=jnp.dtype(config.dtype), **config.model_options)
    options["impl"] = config.kernels
    if config.sync_batch_norm and "axis_name" in model_options(config.model):
        options["axis_name"] = distributed.BATCH
    return create_model(config.model, **options)


@dataclasses.dataclass
class Built:
    """What a run is made of, built from its config the same way for training and for
    ``--eval_only`` (which has no ``train_data``)."""

    config: Any
    mesh: Mesh
    train_data: Input | None
    eval_data: Input
    num_classes: int
    model: nn.Module
    class_names: list[str]  # what the labels index

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 images -> the model's input: the data set's mean/std, in ``config.dtype``."""
        spec = dataset_spec(self.config.dataset)
        return normalize(images, spec.mean, spec.std, jnp.dtype(self.config.dtype))

    def eval_transform(self) -> dict[str, Any]:
        """How the evaluation split's images are made the model's input, as
        :class:`~resnet_flax.io.transforms.EvalTransform`'s fields (what inference on a run's
        checkpoint applies: :mod:`resnet_flax.io.runs`)."""
        config, spec = self.config, dataset_spec(self.config.dataset)
        size = config.image_size
        in_memory = self.eval_data.data is not None  # resized whole; streams: resize, crop
        return {
            "resize_size": size if in_memory else round(size * 256 / 224),
            "crop_size": size,
            "interpolation": "bilinear",
            "mean": list(spec.mean),
            "std": list(spec.std),
        }

    def init_variables(self, *, abstract: bool = False) -> dict[str, Any]:
        """The model's initial variables, replicated (or their shapes, with ``abstract``)."""
        config = self.config
        sharding = distributed.replicated(self.mesh)
        try:
            return init_variables(
                self.model, config.image_size, config.seed, abstract=abstract, sharding=sharding
            )
        except ValueError as error:  # the model's own input checks
            raise ValueError(
                f"image_size={config.image_size} with model {config.model}: {error}"
            ) from None

    @functools.cached_property
    def eval_step(self) -> Callable:
        return make_eval_step(
            self.mesh,
            self.model,
            num_classes=self.num_classes,
            normalize=self.normalize,
            flip_tta=self.config.flip_tta,
        )

    def evaluate(self, variables: Any) -> dict[str, float]:
        """Loss, accuracy (and top-5, where counted) over every example of the eval split."""
        data = self.eval_data
        sums = distributed.replicate(self.mesh, eval_metrics_zeros(self.num_classes))
        for batch in data.eval_batches():
            sums = self.eval_step(variables, sums, batch, data.data)
        sums = jax.device_get(sums)
        count = max(float(sums["count"]), 1.0)
        result = {"loss": float(sums["loss"]) / count, "accuracy": float(sums["correct"]) / count}
        if "correct5" in sums:
            result["top5"] = float(sums["correct5"]) / count
        return result


def _split(config: Any, split: str, class_names: Sequence[str] | None) -> ArrayDataset | StreamInfo:
    """A split's arrays (in memory) or its size and classes (streamed), labelled by
    ``class_names`` (None: its own classes)."""
    arrays = _load(config, split, class_names)
    if arrays is not None:
        return arrays
    return stream_info(config.dataset, _data_dir(config), split, class_names)


def build(config: Any, *, train: bool = True, class_names: Sequence[str] | None = None) -> Built:
    """The mesh, the data (the training split only when ``train``), the model and its
    evaluation, from ``config``.

    Every split is labelled by the training split's classes, by name (``class_names``, a
    checkpoint's, when there is no training split): an evaluation split may hold a subset of
    them, and one with another class is refused here, before anything runs.
    """
    train_split = _split(config, config.train_split, class_names) if train else None
    if train_split is not None:
        class_names = train_split.class_names
    eval_split = _split(config, config.eval_split, class_names)
    mesh = _start(config)
    train_data = None
    if train_split is not None:
        train_data = _input(config, mesh, config.train_split, train_split, config.batch_size)
    eval_data = _input(config, mesh, config.eval_split, eval_split, config.eval_batch_size)
    num_classes = config.num_classes or (train_data or eval_data).num_classes
    model = _model(config, num_classes)
    class_names = list((train_split or eval_split).class_names)
    return Built(config, mesh, train_data, eval_data, num_classes, model, class_names)


class _StopRequest:
    """SIGTERM/SIGINT set a flag (the loop saves and exits at a step boundary).

    With several processes the signal may reach one of them only: each step every process
    votes (:class:`distributed.AgreedFlag`) and all read the same outcome one step later, so
    they stop after, and save, the same step.
    """

    def __init__(self, mesh: Mesh) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._votes = distributed.AgreedFlag(mesh) if jax.process_count() > 1 else None

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

    def stop(self) -> bool:
        """Whether to stop after this step: the same answer on every process."""
        if self._votes is None:
            return self.signal is not None
        return self._votes.vote(self.signal is not None)


# ------------------------------------------------------------------------------------ training


class _Run:
    """One training run: what is built from the config, and the loop over global steps."""

    def __init__(self, config: Any, workdir: paths.Path) -> None:
        self.config = config
        self.built = built = build(config)
        self.mesh, self.model, self.num_classes = built.mesh, built.model, built.num_classes
        self.train_data = built.train_data
        self.steps_per_epoch = self.train_data.steps_per_epoch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size={config.batch_size} is larger than the {self.train_data.size} "
                f"examples of {config.train_split!r}: lower batch_size."
            )
        self.total_steps = config.num_epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, config.max_steps or self.total_steps)
        self.schedule = make_schedule(config, self.steps_per_epoch)
        variables = built.init_variables()  # before anything is written: the model may refuse
        # After build(), which starts multi-process JAX: the lock asks which process this is.
        # A run refused from here on leaves the workdir as it found it: folders it created
        # are removed again, and config.json is written only once every check has passed.
        self.lock = WorkdirLock(workdir)
        created = [d for d in (workdir, workdir / "checkpoints") if not d.exists()]
        self.lock.acquire()
        try:
            self._open(workdir, variables)
        except BaseException:
            self.lock.release()
            _remove_empty(reversed(created))
            raise
        self.result: dict[str, Any] = {"train": None, "eval": None}

    def _open(self, workdir: paths.Path, variables: dict[str, Any]) -> None:
        """Checkpoints (restored from, if any), config.json, the train step and the metrics."""
        config, built = self.config, self.built
        self.checkpoints = Checkpoints(
            workdir / "checkpoints", keep=config.keep_checkpoints, keep_best=config.keep_best
        )
        self.state, self.sums, self.meta = self._initial_state(variables)
        _write_config(config, workdir / "config.json")
        in_memory = self.train_data.data is not None
        self.train_step = make_train_step(
            self.mesh,
            self.model,
            num_classes=self.num_classes,
            normalize=built.normalize,
            augment=augment_cifar if config.augment and in_memory else None,
            label_smoothing=config.label_smoothing,
            seed=config.seed,
        )
        self.step = int(jax.device_get(self.state.step))
        self.writer = MetricsWriter(workdir, resume_step=self.step or None)

    def _initial_state(self, variables: dict[str, Any]):
        """The latest checkpoint's state, else a fresh (or pretrained) one."""
        config, mesh, replicated = self.config, self.mesh, distributed.replicated(self.mesh)
        tx = make_optimizer(config, self.schedule, head=getattr(type(self.model), "head", None))
        sums = distributed.replicate(mesh, train_metrics_zeros())
        meta: dict[str, Any] = {"best_accuracy": None, "best_step": None}
        resume = self.checkpoints.latest_step() is not None
        if resume:  # before reading any array: a mismatch is named, not a restore failure
            self._check_resume(self.checkpoints.saved_meta())
        if config.pretrained and not resume:
            loaded = pretrained_variables(
                config.pretrained,
                config.model,
                self.model,
                jax.device_get(variables),
                mesh,
                **config.model_options,
            )
            variables = distributed.replicate(mesh, loaded)
        state = new_train_state(self.model, variables, tx, replicated)
        if not resume:
            return state, sums, meta
        target = abstract_tree({"train_state": state, "metrics": sums}, mesh)
        misfit = self.checkpoints.misfit(target)
        if misfit is not None:
            raise CheckpointError(
                f"the checkpoint in {self.checkpoints.directory} does not fit this config: "
                f"{misfit}. Resume with the config it was trained with, or use a new workdir."
            )
        restored, meta, step = self.checkpoints.restore(target, quarantine=True)
        self._check_resume(meta)  # the step restored may be an older one
        _say(f"resuming from step {step} of {self.total_steps} ({self.checkpoints.directory})")
        return restored["train_state"], restored["metrics"], meta

    def _run_record(self) -> dict[str, Any]:
        """What a checkpoint records of the run, and a resume must find again: the model and
        the batches (a data position means the same only with the same data and batches)."""
        config = self.config
        return {
            "model": config.model,
            "model_options": config.model_options.to_dict(),
            "num_classes": self.num_classes,
            "dataset": config.dataset,
            "train_split": config.train_split,
            "train_size": self.train_data.size,
            "class_names": self.built.class_names,
            "batch_size": config.batch_size,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def _check_resume(self, meta: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint of another model or other data, naming what differs
        (checkpoints written before a key was recorded are not checked for it)."""
        where = f"the checkpoint in {self.checkpoints.directory}"
        for key, value in self._run_record().items():
            saved = meta.get(key, value)
            if saved == value:
                continue
            if key == "class_names":
                raise CheckpointError(
                    f"{where} was trained on {len(saved)} classes ({_first_names(saved)}); "
                    f"this data set's training split has {len(value)} ({_first_names(value)}): "
                    f"the data set differs. Point data_dir at the data it was trained on, or "
                    f"use a new workdir."
                )
            if key in ("train_size", "steps_per_epoch"):
                raise CheckpointError(
                    f"{where} was trained on a split with {key}={saved}, this config's has "
                    f"{value}: the training data differs. Use the same data, or a new workdir."
                )
            raise CheckpointError(
                f"{where} was trained with {key}={saved!r}, this config has {key}={value!r}: "
                f"resume with --config.{key}={_cli_value(saved)}, or use a new workdir."
            )

    def train(self) -> dict[str, Any]:
        config, interrupted, stopped_by = self.config, False, None
        if self.step >= self.stop_step:
            _say(f"already at step {self.step}: nothing to train (raise max_steps or num_epochs)")
        self.progress = progress = Progress(
            self.stop_step, self.step, config.name or config.model, config.log_every_steps
        )
        self._window = (time.perf_counter(), self.step)  # throughput: (start, first step)
        batches = self.train_data.train_batches(self.step)
        try:
            with _StopRequest(self.mesh) as stop_request:
                while self.step < self.stop_step:
                    self.state, self.sums = self.train_step(
                        self.state, self.sums, next(batches), self.train_data.data
                    )
                    self.step += 1
                    logged = self._log() if self._log_due() else {}
                    progress.update(self.step, **logged)
                    accuracy = self._evaluate() if self._eval_due() else None
                    stopping = stop_request.stop()
                    if accuracy is not None or stopping or self._checkpoint_due():
                        self._save(accuracy)
                    if stopping:  # another process's signal stops this one too
                        interrupted = True
                        stopped_by = signal.Signals(stop_request.signal or signal.SIGTERM).name
                        break
        except DataError as error:
            raise self._stopped_by_data(error) from None
        finally:
            batches.close()  # stops a stream's decoding processes
            self.checkpoints.wait()
            self.checkpoints.close()
            progress.close()
            self.writer.close()
            self.lock.release()
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "interrupted": interrupted or self.step < self.total_steps,
            "signal": stopped_by,
            "best_accuracy": self.meta["best_accuracy"],
            "best_step": self.meta["best_step"],
            **self.result,
        }

    def _stopped_by_data(self, error: DataError) -> DataError:
        """Save this step (the state is whole: a data set fails between steps), as a signal
        does, so that an undecodable file loses no work; the error says how to go on."""
        if self.step > 0:
            self._save(None)
            self.checkpoints.wait()
            where = f"saved in {self.checkpoints.directory}"
        else:
            where = "nothing to save yet"
        return DataError(
            f"{error} Training stopped at step {self.step} ({where}): the same command resumes "
            f"there once the file is fixed, or with --config.skip_bad_images=true, which skips "
            f"such files."
        )

    def _epoch_end(self) -> bool:
        return self.step % self.steps_per_epoch == 0

    def _log_due(self) -> bool:
        return self.step % self.config.log_every_steps == 0 or self.step == self.total_steps

    def _eval_due(self) -> bool:
        every = self.config.eval_every_epochs * self.steps_per_epoch
        return self._epoch_end() and (self.step % every == 0 or self.step == self.total_steps)

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every_steps
        due = self.step % every == 0 if every else self._epoch_end()
        return due or self.step == self.stop_step

    def _log(self) -> dict[str, float]:
        """Write the ``train`` line of the window that ends now; start the next window."""
        self._check_finite()
        sums = jax.device_get(self.sums)
        start, first = self._window
        count = max(float(sums["count"]), 1.0)
        line = {
            "loss": float(sums["loss"]) / count,
            "accuracy": float(sums["correct"]) / count,
            "lr": float(self.schedule(self.step - 1)),
            "images_per_sec": (self.step - first)
            * self.config.batch_size
            / max(time.perf_counter() - start, 1e-9),
        }
        self.sums = distributed.replicate(self.mesh, train_metrics_zeros())
        self._window = (time.perf_counter(), self.step)
        self.result["train"] = line
        self.writer.write("train", self.step, self.step / self.steps_per_epoch, **line)
        return line

    def _evaluate(self) -> float:
        """Evaluate, write the ``eval`` line, track the best; returns the accuracy."""
        jax.block_until_ready(self.state)  # the train steps in flight are training time
        start = time.perf_counter()
        variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
        metrics = self.built.evaluate(variables)
        self.result["eval"] = metrics
        epoch = self.step / self.steps_per_epoch
        self.writer.write("eval", self.step, epoch, **metrics)
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.progress.write(f"eval step {self.step} (epoch {epoch:g}) | {shown}")
        if self.meta["best_accuracy"] is None or metrics["accuracy"] > self.meta["best_accuracy"]:
            self.meta.update(best_accuracy=metrics["accuracy"], best_step=self.step)
        window_start, first = self._window
        self._window = (window_start + time.perf_counter() - start, first)  # not training time
        return metrics["accuracy"]

    def _save(self, accuracy: float | None) -> None:
        """An asynchronous checkpoint of this step (never of a NaN/inf state)."""
        self._check_finite()
        self.meta.update(
            step=self.step,
            epoch=self.step / self.steps_per_epoch,
            config=self.config.name,
            transform=self.built.eval_transform(),  # for inference (resnet_flax.io.runs)
            **self._run_record(),
        )
        tree = {"train_state": self.state, "metrics": self.sums}
        self.checkpoints.save(self.step, tree, dict(self.meta), accuracy)

    def _check_finite(self) -> None:
        bad = int(jax.device_get(self.sums["nonfinite_step"]))
        if bad < 0:
            return
        self.checkpoints.wait()
        last = self.checkpoints.latest_step()
        kept = f"the last good checkpoint is step {last}" if last is not None else "no checkpoint"
        raise TrainingDiverged(
            f"the training loss or the parameters became NaN/inf at step {bad}; stopped "
            f"without saving ({kept} in {self.checkpoints.directory}). Lower learning_rate, "
            f"add warmup_epochs, or use dtype='float32'."
        )


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _write_config(config: Any, path: paths.Path) -> None:
    """Write (process 0) and show the config a run or an evaluation goes ahead with."""
    if jax.process_index() == 0:
        text = save_config(config, path)
        print(f"config {config.name} (written to {path}):\n{text}", flush=True)


def _remove_empty(folders: Iterable[paths.Path]) -> None:
    """Remove these folders where they are (still) empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _first_names(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def train_and_evaluate(config: Any, workdir: paths.PathLike) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint), evaluating as set;
    one trainer per workdir (:class:`~resnet_flax.train.lock.WorkdirLock`).

    Returns ``{"step", "epoch", "interrupted", "signal", "train", "eval", "best_accuracy",
    "best_step"}``; ``interrupted`` is True when a signal or ``max_steps`` stopped training
    before the end, ``signal`` names the signal (``"SIGTERM"``, ``"SIGINT"``) that did.
    """
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's per-save chatter
    with quiet_background_failures():
        return _Run(config, paths.as_path(workdir)).train()


# ---------------------------------------------------------------------------------- evaluation


def evaluate(config: Any, workdir: paths.PathLike) -> dict[str, Any]:
    """Evaluate the latest checkpoint of ``workdir`` (or ``config.checkpoint``) on eval_split.

    Every example is seen exactly once; an ``eval`` line is appended to metrics.jsonl.
    Returns the metrics with the checkpoint's ``step`` and ``epoch``.
    """
    workdir = paths.as_path(workdir)
    logging.getLogger("absl").setLevel(logging.ERROR)
    if not config.checkpoint and not (workdir / "checkpoints").is_dir():
        raise CheckpointError(
            f"no checkpoint in {workdir / 'checkpoints'}: train first, or set "
            f"--config.checkpoint=/path/to/checkpoints."
        )
    source = config.checkpoint or workdir
    directory, _ = resolve(source)
    # Labels index the classes the checkpoint was trained on (recorded since they are).
    trained_on = read_meta(source).get("class_names")
    built = build(config, train=False, class_names=trained_on)
    variables, meta, step = load_variables(source, built.mesh)
    if shapes(variables) != shapes(built.init_variables(abstract=True)):
        raise CheckpointError(
            f"the checkpoint in {directory} does not fit model {config.model} with "
            f"num_classes={built.num_classes}: evaluate with the config it was trained with."
        )
    _write_config(config, workdir / "eval_config.json")
    metrics = built.evaluate(variables)
    epoch = step / meta["steps_per_epoch"] if meta.get("steps_per_epoch") else 0.0
    with MetricsWriter(workdir) as writer:
        writer.write("eval", step, epoch, **metrics)
    return {"step": step, "epoch": epoch, **metrics}
