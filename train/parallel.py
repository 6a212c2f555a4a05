"""Devices and processes: multi-host start-up, the ``batch`` mesh, and global batches.

One mesh axis, ``batch``, spans every device of every process. Each process produces its own
contiguous part of the global batch (``process_slice``) and ``global_batch`` assembles the
global array with ``jax.make_array_from_process_local_data``; replicated values (the train
state, an on-device data set) use ``replicate``. :class:`ArrayInput` (small data sets, on
the devices) and :class:`StreamInput` (grain streams) yield the global batches of a split,
read ahead by :class:`Prefetched`.
On a CPU-only host, :func:`use_cpu_devices` first splits the CPU into several devices.
"""

from __future__ import annotations

import collections
import importlib.util
import itertools
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .data import epoch_permutation

if TYPE_CHECKING:
    from .data import ArrayDataset

BATCH = "batch"


def initialize_distributed(cluster: bool = False) -> bool:
    """Start multi-process JAX when launched as one of several processes; True if it did.

    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are read, and a
    SLURM or Open MPI launch of more than one task is detected by JAX itself. On a TPU host,
    or with ``cluster`` (``--config.distributed=true``), ``jax.distributed.initialize()`` runs
    with no arguments and JAX finds the cluster (Cloud TPU pods, GKE, SLURM, Open MPI); with
    ``cluster`` and none found, the error says how to name one. A single plain process does
    nothing.
    """
    if jax.distributed.is_initialized():
        return True
    if _launched_distributed():
        env = os.environ
        num_processes = int(env["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in env else None
        process_id = int(env["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in env else None
        jax.distributed.initialize(env.get("JAX_COORDINATOR_ADDRESS"), num_processes, process_id)
        return True
    if not (cluster or _on_tpu()):
        return False
    try:
        jax.distributed.initialize()
    except (ValueError, RuntimeError) as error:
        if not cluster:
            return False  # a TPU host on its own
        raise RuntimeError(
            f"distributed=true, but JAX found no cluster to join ({error}). Launch under "
            "SLURM, Open MPI, GKE or on a Cloud TPU pod, or set JAX_COORDINATOR_ADDRESS, "
            "JAX_NUM_PROCESSES and JAX_PROCESS_ID; for one host, leave distributed false."
        ) from error
    return True


def _on_tpu() -> bool:
    """Whether this host has TPUs (libtpu is installed), without starting JAX's backends."""
    return importlib.util.find_spec("libtpu") is not None


CPU_BATCH_PER_DEVICE = 16  # where XLA's CPU weight-gradient convolutions are efficient
# CPU collectives abort when a device is 40 s late at a rendezvous, which an oversubscribed
# machine can cause: wait (and warn) much longer before giving up.
CPU_COLLECTIVE_FLAGS = {
    "xla_cpu_collective_call_warn_stuck_timeout_seconds": 120,
    "xla_cpu_collective_call_terminate_timeout_seconds": 3600,
}


def use_cpu_devices(batch_size: int, *other_batch_sizes: int, replicated_bytes: int = 0) -> int:
    """Split the CPU backend into several devices before JAX starts its backends.

    Small per-device batches suit XLA's CPU convolutions, and the devices run concurrently
    (README, "Data parallel", has the measured effect). The count is the largest that
    divides every batch size, leaves ``CPU_BATCH_PER_DEVICE`` or more training images per
    device, is at most 8 per core, and fits that many copies of ``replicated_bytes`` (an
    on-device data set) in a quarter of the memory. Nothing changes when the count is set
    already (``jax_num_cpu_devices``, ``XLA_FLAGS``) or when several processes share the host;
    when JAX's backends have started already it warns and changes nothing. Accelerators are
    unaffected. With more than one device, the CPU collective timeouts are raised
    (``CPU_COLLECTIVE_FLAGS``) unless XLA_FLAGS sets them. Returns the CPU device count set
    (0: left alone).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags or jax.config.jax_num_cpu_devices != -1:
        return 0
    if _launched_distributed():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = min(8 * (cores or 1), max(batch_size // CPU_BATCH_PER_DEVICE, 1))
    if replicated_bytes:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        limit = min(limit, max(memory // 4 // replicated_bytes, 1))
    common = math.gcd(batch_size, *other_batch_sizes)
    count = max(d for d in range(1, limit + 1) if common % d == 0)
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backends have started: they keep the devices they have
        warnings.warn(
            f"split_cpu_devices: JAX's backends had started already, so the CPU stays "
            f"{jax.local_device_count('cpu')} device(s) instead of {count}. Split it before "
            f"anything uses JAX, or set XLA_FLAGS=--xla_force_host_platform_device_count={count}.",
            stacklevel=2,
        )
        return 0
    if count > 1:  # read when the backends start
        extra = [f"--{k}={v}" for k, v in CPU_COLLECTIVE_FLAGS.items() if k not in flags]
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()
    return count


def _launched_distributed() -> bool:
    env = os.environ
    return (
        jax.distributed.is_initialized()
        or "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def make_mesh() -> Mesh:
    """A 1-D mesh named ``batch`` over all devices of all processes."""
    return jax.make_mesh((jax.device_count(),), (BATCH,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of values every device holds whole."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of a global batch: split along its first axis over ``batch``."""
    return NamedSharding(mesh, P(BATCH))


def check_batch_size(global_batch_size: int, name: str = "batch_size") -> None:
    """Raise ``ValueError`` unless the global batch splits evenly over the devices."""
    devices = jax.device_count()
    if global_batch_size <= 0 or global_batch_size % devices:
        raise ValueError(
            f"{name}={global_batch_size} must be a positive multiple of the number of devices "
            f"({devices}); try {max(devices, global_batch_size // devices * devices)}."
        )


def process_slice(rows: np.ndarray) -> np.ndarray:
    """This process's contiguous part of a global batch (all of it in a single process)."""
    size = len(rows) // jax.process_count()
    start = jax.process_index() * size
    return rows[start : start + size]


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assemble each process's local batch into global arrays sharded along ``batch``."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Place a host value (identical on every process) whole on every device."""
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class AgreedFlag:
    """A flag every process reads the same, one vote late, without stalling the steps.

    Each :meth:`vote` starts an on-device ``any`` over every process's flag (asynchronous,
    queued behind the step just dispatched) and returns the outcome of the vote before,
    which by then has run, so the host waits for at most the previous step.
    """

    def __init__(self, mesh: Mesh) -> None:
        self._mesh = mesh
        self._any = jax.jit(jnp.any, out_shardings=replicated(mesh))
        self._pending: jax.Array | None = None

    def vote(self, flag: bool) -> bool:
        """Cast this process's ``flag``; the agreed outcome of the previous vote (or False)."""
        local = np.full((jax.local_device_count(),), flag)
        previous = self._pending
        self._pending = self._any(
            jax.make_array_from_process_local_data(batch_sharded(self._mesh), local)
        )
        return previous is not None and bool(previous)


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

    def __init__(
        self, mesh: Mesh, stream_args: dict[str, Any], batch_size: int, size: int, num_classes: int
    ):
        self.mesh, self.batch_size, self.size, self.num_classes = (
            mesh,
            batch_size,
            size,
            num_classes,
        )
        self._args = stream_args  # make_stream's arguments but train, batch size and position

    def _batches(self, train: bool, start_step: int) -> Iterator[dict[str, jax.Array]]:
        from .data import make_stream  # imports grain: only for streamed data sets

        stream = make_stream(
            **self._args,
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
