"""Metrics to ``WORKDIR/metrics.jsonl`` and TensorBoard, and a progress display for the loop.

``metrics.jsonl`` holds one JSON object per line, flushed as it is written so that a crash loses
nothing: ``{"split": "train", "step": 1200, "epoch": 3.07, "loss": 0.91, "accuracy": 0.68,
"lr": 0.1, "images_per_sec": 5120.3, "time": 1717171717.2}`` (``time``: Unix seconds). After a
resume, steps past the checkpoint appear again; readers keep the last record per split and
step (as ``train.plot`` does). Only process 0 writes. Both go through
:mod:`resnet_flax.io.paths`, so the workdir may be on ``gs://`` or any filesystem it serves.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import jax
import numpy as np
from tqdm import tqdm

from resnet_flax.io import paths

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
Scalar = bool | int | float | str


def _is_main_process() -> bool:
    return jax.process_index() == 0


def to_scalar(name: str, value: Any) -> Scalar:
    """A metric value (Python, NumPy or 0-d JAX) as a Python scalar; TypeError otherwise."""
    if isinstance(value, bool | int | float | str):
        return value
    array = np.asarray(value)
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__} {value!r}.")
    return array.item()


class MetricsWriter:
    """Appends metric records to ``WORKDIR/metrics.jsonl`` and ``WORKDIR/tensorboard/``.

    ``resume_step``: when resuming from a checkpoint at this step, TensorBoard hides the events
    the interrupted run logged from this step on.
    """

    def __init__(self, workdir: paths.PathLike, resume_step: int | None = None) -> None:
        workdir = paths.as_path(workdir)
        self.path = workdir / METRICS_FILE
        self._active = _is_main_process()
        if not self._active:
            return
        from tensorboardX import SummaryWriter  # deferred: imports protobuf

        _register_tensorboard_filesystems()
        workdir.mkdir(parents=True, exist_ok=True)
        self._file = paths.AppendFile(self.path)
        self._tensorboard = SummaryWriter(
            logdir=str(workdir / TENSORBOARD_DIR), purge_step=resume_step
        )

    def write(
        self, split: str, step: int, epoch: float, *, loss: Any, accuracy: Any, **metrics: Any
    ) -> dict[str, Scalar]:
        """Record ``loss``, ``accuracy`` (a fraction) and any other scalars for ``split``
        (e.g. ``train``, ``eval``) at global ``step``; returns the record."""
        values = {"loss": loss, "accuracy": accuracy, **metrics}
        record: dict[str, Scalar] = {
            "split": split,
            "step": int(step),
            "epoch": to_scalar("epoch", epoch),
            **{name: to_scalar(name, value) for name, value in values.items()},
            "time": round(time.time(), 3),
        }
        if self._active:
            self._file.write((json.dumps(record) + "\n").encode())
            self._file.flush()
            for name, value in record.items():
                if name not in ("split", "step", "time") and not isinstance(value, str):
                    self._tensorboard.add_scalar(f"{split}/{name}", value, int(step))
        return record

    def close(self) -> None:
        """Flush and close the files."""
        if self._active:
            self._file.close()
            self._tensorboard.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _EpathEventFiles:
    """tensorboardX's writer factory for remote schemes: event files through ``paths``."""

    def open(self, path: str) -> paths.AppendFile:
        return paths.AppendFile(path)

    def directory_check(self, path: str) -> None:
        paths.as_path(path).mkdir(parents=True, exist_ok=True)


def _register_tensorboard_filesystems() -> None:
    from tensorboardX import record_writer

    for scheme in paths.SERVED_BY:  # replaces tensorboardX's own gs:// (google-cloud-storage)
        record_writer.register_writer_factory(scheme, _EpathEventFiles())


def format_metrics(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Short display strings: 4 significant digits, ``images_per_sec`` as ``img/s``."""
    shown = {}
    for name, value in metrics.items():
        value = to_scalar(name, value)
        label = "img/s" if name == "images_per_sec" else name
        if isinstance(value, float):
            shown[label] = f"{value:.0f}" if label == "img/s" else f"{value:.4g}"
        else:
            shown[label] = str(value)
    return shown


class Progress:
    """Training progress: a tqdm bar on a terminal, else a plain line every
    ``log_every_steps`` (log files stay readable). Only process 0 shows anything.

    ``update(step, **metrics)`` takes the global step and the latest metrics to show
    (``images_per_sec``, ``loss``, ``lr``, ...); metrics persist until replaced.
    """

    def __init__(
        self,
        total_steps: int,
        initial: int = 0,
        desc: str = "train",
        log_every_steps: int = 100,
        file: TextIO | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.desc = desc
        self.log_every_steps = max(int(log_every_steps), 1)
        self._file = file or sys.stdout
        self._active = _is_main_process()
        self._metrics: dict[str, str] = {}
        self._step = initial
        self._initial = initial
        self._start = time.monotonic()
        self._next_line = (initial // self.log_every_steps + 1) * self.log_every_steps
        self._printed: int | None = None
        self._bar = None
        if self._active and self._file.isatty():
            self._bar = tqdm(
                total=total_steps,
                initial=initial,
                desc=desc,
                unit="step",
                file=self._file,
                dynamic_ncols=True,
            )

    def update(self, step: int, **metrics: Any) -> None:
        """Move to global ``step``, showing ``metrics``."""
        self._metrics.update(format_metrics(metrics))
        self._step = int(step)
        if not self._active:
            return
        if self._bar is not None:
            self._bar.set_postfix(self._metrics, refresh=False)
            self._bar.update(self._step - self._bar.n)
        elif self._step >= self._next_line or (
            self._step >= self.total_steps and self._printed != self._step
        ):
            self._print_line()
            self._printed = self._step
            self._next_line = (self._step // self.log_every_steps + 1) * self.log_every_steps

    def _print_line(self) -> None:
        elapsed = time.monotonic() - self._start
        done = self._step - self._initial
        eta = (self.total_steps - self._step) * elapsed / done if done > 0 else None
        parts = [f"{self.desc} step {self._step}/{self.total_steps}"]
        parts += [f"{name} {value}" for name, value in self._metrics.items()]
        parts.append(f"elapsed {tqdm.format_interval(elapsed)}")
        if eta is not None:
            parts.append(f"eta {tqdm.format_interval(eta)}")
        print(" | ".join(parts), file=self._file, flush=True)

    def write(self, text: str) -> None:
        """A line of its own (process 0), above the bar on a terminal."""
        if not self._active:
            return
        if self._bar is not None:
            self._bar.write(text, file=self._file)
        else:
            print(text, file=self._file, flush=True)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
