"""Checkpoints with orbax: asynchronous saves, latest-N plus best-N kept, safe restore.

A checkpoint is one step directory holding two items: ``state`` (the train state and the
on-device metric sums, ``StandardSave``) and ``meta`` (JSON: data position, epoch, best
accuracy, config name). Evaluated steps also carry orbax ``metrics`` (``accuracy``), which
rank them for the best-N policy. Retention is a ``preservation_policy`` that keeps a step
if it is among the latest ``keep`` *or* the best ``keep_best``, so the newest checkpoint is
never deleted for being worse than an old one.

Restore reads onto an abstract tree whose leaves carry the current mesh's shardings, so a
checkpoint written on 8 devices restores on 1 (and the reverse). A step that cannot be read
(truncated, corrupt) is skipped with a warning naming its directory, and the previous one is
tried; if none can be read, :class:`CheckpointError` names the step directory and the file.
With several processes the candidates are process 0's, and a step that fails on any process
is skipped by all, so every process resumes from the same step.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers as policies

from resnet_flax.io import paths
from resnet_flax.train.parallel import any_process, replicated

STATE, META = "state", "meta"
_READ_ERRORS = (ValueError, OSError, KeyError, RuntimeError)  # what an unreadable step raises


class CheckpointError(ValueError):
    """No readable checkpoint where one was expected."""


def _accuracy(metrics: dict[str, Any]) -> float:
    return float(metrics["accuracy"])


def _short(error: BaseException) -> str:
    """The first line of an error message, without tensorstore's long spec dump."""
    return str(error).split(" [tensorstore_spec=")[0].splitlines()[0] if str(error) else repr(error)


class Checkpoints:
    """The checkpoint directory of a run (``workdir/checkpoints``)."""

    def __init__(
        self,
        directory: paths.PathLike,
        *,
        keep: int = 3,
        keep_best: int = 1,
        read_only: bool = False,
    ) -> None:
        self.directory = _checkpoint_path(directory)
        policy = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=max(keep, 1)),
                policies.BestN(
                    get_metric_fn=_accuracy, n=keep_best, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=_accuracy,
            best_mode="max",
            preservation_policy=policy,
            read_only=read_only,
            create=not read_only,
        )
        handlers = {STATE: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=handlers
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self, step: int, state: Any, meta: dict[str, Any], accuracy: float | None = None
    ) -> bool:
        """Start an asynchronous save of ``state`` and ``meta`` at ``step``.

        ``accuracy`` (an eval result at this step) ranks the checkpoint for ``keep_best``.
        Returns False if ``step`` is already saved.
        """
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
        )
        metrics = None if accuracy is None else {"accuracy": float(accuracy)}
        return self._manager.save(step, args=args, metrics=metrics, force=True)

    def restore(
        self, target: Any, step: int | None = None, *, quarantine: bool = False
    ) -> tuple[Any, dict[str, Any], int]:
        """Restore ``(state, meta, step)`` onto ``target`` from ``step`` or the latest.

        ``target`` is an abstract tree (see :func:`abstract_tree`). Unreadable steps are
        skipped, newest first, with a warning; with ``quarantine`` they are also renamed to
        ``<step>.corrupt`` (once an older step has restored) so training can save past them.
        """
        steps = _agreed([s for s in reversed(self.all_steps()) if step is None or s <= step])
        if step is not None and step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}.")
        failures: list[tuple[int, BaseException]] = []
        for candidate in steps:
            args = ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()}
            )
            # Every process restores the same step: one that fails anywhere is skipped by all.
            # The check before the (collective) restore reads the step's metadata locally, so
            # a step one process cannot see is agreed on before any process starts reading it.
            error = self._unreadable_here(candidate)
            if not any_process(error is not None):
                try:
                    restored = self._manager.restore(candidate, args=args)
                except _READ_ERRORS as e:
                    error = e
            if any_process(error is not None):
                failures.append((candidate, error or _ElsewhereError(candidate)))
                continue
            for bad, error in failures:
                where = self.directory / str(bad)
                warnings.warn(
                    f"checkpoint {where} is unreadable ({_short(error)}); "
                    f"resuming from step {candidate} instead.",
                    stacklevel=2,
                )
                if quarantine:
                    self._quarantine(bad)
            return restored[STATE], dict(restored[META]), candidate
        if not failures:
            raise CheckpointError(f"no checkpoint in {self.directory}.")
        bad, error = failures[0]
        raise CheckpointError(
            f"no readable checkpoint in {self.directory}: step directory "
            f"{self.directory / str(bad)} fails with: {_short(error)}. Delete that directory "
            f"to start over, or point config.checkpoint at a good one."
        )

    def _unreadable_here(self, step: int) -> BaseException | None:
        """Why this process cannot read ``step``'s metadata, or None (no collectives)."""
        try:
            self._manager.item_metadata(step)
        except _READ_ERRORS as error:
            return error
        return None

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            source = self.directory / str(step)
            source.rename(source.with_name(f"{step}.corrupt"))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._manager.reload()

    def wait(self) -> None:
        """Block until the pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


class _ElsewhereError(RuntimeError):
    def __init__(self, step: int) -> None:
        super().__init__(f"step {step} could not be read by another process")


def _agreed(steps: list[int]) -> list[int]:
    """Process 0's list of candidate steps, on every process (views of a shared directory
    can differ for a moment)."""
    if jax.process_count() == 1:
        return steps
    count = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
    mine = np.full(count, -1, np.int64)
    mine[: min(count, len(steps))] = steps[:count]
    return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)]


def abstract_tree(tree: Any, mesh: Mesh) -> Any:
    """Shapes and dtypes of ``tree`` with the replicated sharding of ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _checkpoint_path(directory: paths.PathLike) -> paths.Path:
    """The absolute path of a checkpoint directory; CheckpointError where orbax cannot write.

    orbax writes arrays through TensorStore, which serves local disks and ``gs://`` only.
    """
    path = paths.absolute(directory)
    if paths.scheme(path) not in (None, "gs"):
        raise CheckpointError(
            f"checkpoints cannot go to {path}: orbax-checkpoint writes arrays through "
            f"TensorStore, which serves local paths and gs:// only. Put the workdir (or "
            f"config.checkpoint) on a local disk or gs://; data_dir and pretrained may stay."
        )
    return path


def resolve(path: paths.PathLike) -> tuple[paths.Path, int | None]:
    """``(checkpoint directory, step or None for the latest)`` from a user's path.

    Accepts a run's workdir (with ``checkpoints/``), a checkpoint directory, or one step
    directory inside it.
    """
    path = _checkpoint_path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a directory).")
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    if path.name.isdigit() and (path / STATE).is_dir():
        return path.parent, int(path.name)
    return path, None


def load_variables(path: paths.PathLike, mesh: Mesh) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``({'params', 'batch_stats'}, meta, step)`` from one of our checkpoints, whatever the
    optimizer it was trained with (for evaluation and fine-tuning)."""
    directory, step = resolve(path)
    checkpoints = Checkpoints(directory, read_only=True)
    try:
        step = checkpoints.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {directory}.")
        metadata = checkpoints._manager.item_metadata(step)[STATE]
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated(mesh)),
            dict(metadata.tree),
        )
        state, meta, step = checkpoints.restore(abstract, step)
    finally:
        checkpoints.close()
    train_state = state["train_state"]
    variables = {"params": train_state["params"], "batch_stats": train_state["batch_stats"]}
    return variables, meta, step
