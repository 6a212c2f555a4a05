"""Checkpoints with orbax: asynchronous saves, latest-N plus best-N kept, safe restore.

A checkpoint is one step directory holding two items: ``state`` (the train state and the
on-device metric sums, ``StandardSave``) and ``meta`` (JSON: data position, epoch, best
accuracy, config name). Evaluated steps also carry orbax ``metrics`` (``accuracy``), which
rank them for the best-N policy. Retention is a ``preservation_policy`` that keeps a step
if it is among the latest ``keep`` *or* the best ``keep_best``, so the newest checkpoint is
never deleted for being worse than an old one.

Restore reads onto an abstract tree whose leaves carry the current mesh's shardings, so a
checkpoint written on 8 devices restores on 1 (and the reverse). A step that cannot be read
(truncated, deleted or corrupt files: whatever orbax raises) is skipped with a warning naming
its directory, and the previous one is tried; if none can be read, :class:`CheckpointError`
names the step directory and the file. orbax's chunks carry no checksum, so each step also gets
``checksums.json`` (the sha256 of every file), written off the training thread once orbax has
finished the step, and checked before the step is restored: a changed byte is corruption too.
With several processes the candidates are process 0's, and a step that fails on any process
is skipped by all, so every process resumes from the same step.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from orbax.checkpoint import checkpoint_managers as policies

from resnet_flax.io import paths
from resnet_flax.io.download import ChecksumError
from resnet_flax.io.runs import META, STATE, RunError, locate

from .distributed import any_process, replicated

CHECKSUMS = "checksums.json"  # in each step directory: {"sha256": {relative path: hex digest}}
_CHUNK = 1 << 22


class CheckpointError(ValueError):
    """No readable checkpoint where one was expected, or one that does not fit the run."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, a quota, a file size limit)."""


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
        if not read_only:  # fail now, not in orbax's background save after a long first epoch
            try:
                paths.check_writable(self.directory)
            except OSError as error:
                raise CheckpointError(
                    f"cannot write checkpoints to {self.directory} ({error.strerror or error}): "
                    f"choose another --workdir, or make that directory writable."
                ) from None
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
        # Checksums are recorded by process 0, one step behind the saves, in this thread.
        self._hasher = None
        if not read_only and jax.process_index() == 0:
            self._hasher = concurrent.futures.ThreadPoolExecutor(1, "checkpoint-checksums")
        self._unrecorded: int | None = None
        self._recording: concurrent.futures.Future | None = None

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
        try:  # raises the previous save's failure, if it failed
            saved = self._manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as error:
            raise self._write_error(error) from None
        # orbax finished the previous save before starting this one: its files are final.
        self._record_checksums()
        if saved:
            self._unrecorded = step
        return saved

    def _record_checksums(self) -> None:
        if self._hasher is not None and self._unrecorded is not None:
            step_dir = self.directory / str(self._unrecorded)
            self._recording = self._hasher.submit(record_checksums, step_dir)
        self._unrecorded = None

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
                except (
                    Exception
                ) as e:  # orbax and TensorStore raise many kinds; all mean unreadable
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

    def saved_meta(self, step: int | None = None) -> dict[str, Any]:
        """The ``meta`` of ``step`` (default the latest), read alone (no arrays); ``{}`` if
        there is no step or its meta is unreadable (:meth:`restore` then says why)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return {}
        args = ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        try:
            restored = self._manager.restore(step, args=args)
        except Exception:  # unreadable: restore() skips it with a warning
            return {}
        return dict(restored[META])

    def misfit(self, target: Any) -> str | None:
        """How the latest step's arrays differ from ``target``'s (the first leaf whose path or
        shape differs, in words), or None when they fit or the step is unreadable (then
        :meth:`restore` says why)."""
        step = self.latest_step()
        try:
            saved = _leaf_shapes(dict(self._manager.item_metadata(step)[STATE].tree))
        except Exception:  # unreadable metadata: restore() skips the step with a warning
            return None
        wanted = _leaf_shapes(target)
        for path in sorted(saved.keys() | wanted.keys()):
            if saved.get(path) != wanted.get(path):
                where = ".".join(path)
                if path not in saved:
                    return f"it has no {where}, which this config's model and optimizer need"
                if path not in wanted:
                    return f"it has {where}, which this config's model and optimizer lack"
                return f"its {where} has shape {saved[path]}, this config's {wanted[path]}"
        return None

    def _unreadable_here(self, step: int) -> BaseException | None:
        """Why this process cannot read ``step``: a file differs from its recorded checksum, or
        the metadata is unreadable; None if it can (no collectives)."""
        try:
            verify_checksums(self.directory / str(step))
            self._manager.item_metadata(step)
        except Exception as error:
            return error
        return None

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            source = self.directory / str(step)
            source.rename(source.with_name(f"{step}.corrupt"))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"quarantine checkpoint {step}")
        self._manager.reload()

    def _write_error(self, error: Exception) -> CheckpointWriteError:
        """A failed background save (a full disk, a quota) as one line: the reason the OS
        gave, where, and how to go on."""
        code = re.search(r"os_error_code='(\d+)'", str(error))
        said = os.strerror(int(code.group(1))) if code else _short(error)
        kept = [s for s in self.all_steps() if (self.directory / str(s)).is_dir()]
        last = f"step {kept[-1]}" if kept else "the start"
        return CheckpointWriteError(
            f"cannot write a checkpoint in {self.directory}: {said}. Make room there (or lower "
            f"keep_checkpoints), then run the same command again: it resumes from {last}."
        )

    def wait(self) -> None:
        """Block until the pending asynchronous save is on disk, with its checksums."""
        try:
            self._manager.wait_until_finished()
        except Exception as error:
            raise self._write_error(error) from None
        self._record_checksums()
        if self._recording is not None:
            self._recording.result()
            self._recording = None

    def close(self) -> None:
        self.wait()
        if self._hasher is not None:
            self._hasher.shutdown()
        self._manager.close()


def _sha256(path: paths.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _step_files(step_dir: paths.Path) -> dict[str, paths.Path]:
    """Every file below ``step_dir`` by its relative path (one listing per folder)."""
    base = str(step_dir).split("://", 1)[-1].rstrip("/")
    files = {}
    for folder, _, names in step_dir.walk():  # fsspec's walk names folders without the scheme
        inner = str(folder).split("://", 1)[-1][len(base) :].strip("/")
        for name in names:
            relative = f"{inner}/{name}" if inner else name
            if relative not in (CHECKSUMS, f"{CHECKSUMS}.part"):
                files[relative] = step_dir / relative
    return files


def record_checksums(step_dir: paths.Path) -> None:
    """Write ``step_dir/checksums.json``: the sha256 of each file orbax wrote there. A step
    that retention deleted meanwhile is left alone."""
    try:
        digests = {name: _sha256(path) for name, path in sorted(_step_files(step_dir).items())}
        if not step_dir.is_dir():
            return
        text = json.dumps({"sha256": digests}, indent=0)
        if not paths.is_local(step_dir):
            # an object store shows an upload whole or not at all; a rename there is a copy
            # and a delete
            (step_dir / CHECKSUMS).write_text(text)
            return
        partial = step_dir / f"{CHECKSUMS}.part"
        partial.write_text(text)
        partial.replace(step_dir / CHECKSUMS)
    except FileNotFoundError:
        return


def verify_checksums(step_dir: paths.Path) -> None:
    """Raise :class:`ChecksumError` naming the first file of ``step_dir`` that is missing or
    whose content changed since it was saved; steps saved without checksums pass."""
    manifest = step_dir / CHECKSUMS
    if not manifest.exists():
        return
    try:
        recorded = json.loads(manifest.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise ChecksumError(f"{manifest} is unreadable ({error})") from error
    for name, digest in recorded.items():
        path = step_dir / name
        if not path.exists():
            raise ChecksumError(f"{path} is missing (it was saved with this step)")
        if _sha256(path) != digest:
            raise ChecksumError(f"{path} differs from the checksum recorded when it was saved")


class _ElsewhereError(RuntimeError):
    def __init__(self, step: int) -> None:
        super().__init__(f"step {step} could not be read by another process")


@contextlib.contextmanager
def quiet_background_failures() -> Iterator[None]:
    """While saving: orbax's background saves log a failure (a full disk) with its traceback
    before :meth:`Checkpoints.wait` raises it, asyncio logs each failed write's future, and
    TensorStore's callbacks report each closed event loop as unraisable; all are dropped and
    the failure is raised once, in one line. After a failed save orbax's abandoned tasks go on
    reporting themselves as they are collected (at exit, mostly), so the silence stays."""
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels, hook = [logger.level for logger in loggers], sys.unraisablehook
    failed = False

    def unraisable(info: Any) -> None:
        error = info.exc_value
        closed_loop = isinstance(error, RuntimeError) and "loop is closed" in str(error)
        if not (closed_loop or failed):
            hook(info)

    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = unraisable
    try:
        yield
    except CheckpointWriteError:
        failed = True
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        raise
    finally:
        if not failed:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            sys.unraisablehook = hook


def _agreed(steps: list[int]) -> list[int]:
    """Process 0's list of candidate steps, on every process (views of a shared directory
    can differ for a moment)."""
    if jax.process_count() == 1:
        return steps
    count = int(multihost_utils.broadcast_one_to_all(np.int32(len(steps))))
    mine = np.full(count, -1, np.int64)
    mine[: min(count, len(steps))] = steps[:count]
    return [int(s) for s in multihost_utils.broadcast_one_to_all(mine)]


def _leaf_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Each leaf's shape by its path of names (dict keys, dataclass fields and sequence
    indices alike, as orbax stores them)."""

    def name(key: Any) -> str:
        for field in ("key", "name", "idx"):
            if hasattr(key, field):
                return str(getattr(key, field))
        return str(key)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(map(name, path)): tuple(getattr(leaf, "shape", ())) for path, leaf in leaves}


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
    try:
        return locate(_checkpoint_path(path))
    except RunError as error:
        raise CheckpointError(str(error)) from None


def read_meta(path: paths.PathLike) -> dict[str, Any]:
    """The ``meta`` of the checkpoint a user's path names (see :func:`resolve`), arrays unread;
    ``{}`` if it has none readable."""
    directory, step = resolve(path)
    checkpoints = Checkpoints(directory, read_only=True)
    try:
        return checkpoints.saved_meta(step)
    finally:
        checkpoints.close()


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
