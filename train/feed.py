"""The trainer's input: each split's global batches, read ahead to the devices.

:class:`ArrayInput` (small data sets, held on the devices: each step sends only indices) and
:class:`StreamInput` (grain streams: each process loads its part of every global batch) yield
the global batches of a split through :class:`Prefetched`.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh

from .data.array_dataset import ArrayDataset, epoch_permutation
from .data.request import StreamSpec
from .distributed import global_batch, process_slice, replicate

T = TypeVar("T")
PREFETCH = 2  # global batches on their way to the devices, as flax.jax_utils.prefetch_to_device


class Prefetched(Iterator[T]):
    """``batches`` read ``size`` ahead: a global batch's host-to-device copies (asynchronous
    in JAX) start while the steps before it run. ``close()`` closes ``batches``."""

    def __init__(self, batches: Iterator[T], size: int = PREFETCH):
        self._batches = batches
        self._queue = collections.deque(itertools.islice(batches, size))

    def __next__(self) -> T:
        if not self._queue:
            raise StopIteration
        self._queue.extend(itertools.islice(self._batches, 1))
        return self._queue.popleft()

    def close(self) -> None:
        self._queue.clear()
        getattr(self._batches, "close", lambda: None)()


class _Input:
    """A split's global batches: ``size`` examples in batches of ``batch_size``, prefetched
    to the devices (:class:`Prefetched`)."""

    size: int
    batch_size: int
    num_classes: int
    data: dict[str, jax.Array] | None  # the on-device data set, or None: batches hold images

    @property
    def steps_per_epoch(self) -> int:
        """Whole training batches per epoch (the last partial one is dropped)."""
        return self.size // self.batch_size

    def train_batches(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        """Global batches from ``start_step`` on, endlessly."""
        return Prefetched(self._train_batches(start_step))

    def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        """One pass over the split; padding rows are masked out."""
        return Prefetched(self._eval_batches())

    def _train_batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        raise NotImplementedError

    def _eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        raise NotImplementedError


class ArrayInput(_Input):
    """An in-memory split held on every device; each step the host sends only indices.

    Train batch ``k`` holds ``epoch_permutation(n, seed, epoch)[i*B:(i+1)*B]`` with
    ``epoch, i = divmod(k, steps_per_epoch)`` (the last partial batch of an epoch is dropped),
    a function of (seed, step) alone, so a run resumes mid-epoch exactly. Eval batches cover
    every example once, the last one padded and masked.
    """

    def __init__(self, mesh: Mesh, dataset: ArrayDataset, batch_size: int, seed: int = 0):
        self.mesh, self.batch_size, self.seed = mesh, batch_size, seed
        self.size = len(dataset)
        self.num_classes = dataset.num_classes
        self.data = replicate(mesh, {"image": dataset.images, "label": dataset.labels})

    def _train_batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        steps, epoch, permutation = self.steps_per_epoch, -1, None
        for step in itertools.count(start_step):
            if step // steps != epoch:
                epoch = step // steps
                permutation = epoch_permutation(self.size, self.seed, epoch).astype(np.int32)
            start = (step % steps) * self.batch_size
            rows = permutation[start : start + self.batch_size]
            yield global_batch(self.mesh, {"index": process_slice(rows)})

    def _eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        for start in range(0, self.size, self.batch_size):
            rows = np.arange(start, start + self.batch_size, dtype=np.int32)
            mask = rows < self.size
            local = {"index": np.where(mask, rows, 0), "mask": mask}
            yield global_batch(self.mesh, {k: process_slice(v) for k, v in local.items()})


class StreamInput(_Input):
    """A streamed split (grain): each process loads its part of every global batch."""

    data = None  # batches carry the images themselves

    def __init__(self, mesh: Mesh, spec: StreamSpec, batch_size: int, size: int, num_classes: int):
        self.mesh, self.spec, self.batch_size = mesh, spec, batch_size
        self.size, self.num_classes = size, num_classes

    def _batches(self, train: bool, start_step: int) -> Iterator[dict[str, jax.Array]]:
        from .data.stream import make_stream  # imports grain: only for streamed data sets

        stream = make_stream(
            self.spec,
            train=train,
            global_batch_size=self.batch_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_step=start_step,
        )
        try:
            for local in stream:
                yield global_batch(self.mesh, local)
        finally:
            getattr(stream, "close", lambda: None)()

    def _train_batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        return self._batches(True, start_step)

    def _eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        return self._batches(False, 0)
