"""Devices and processes: multi-host start-up, the ``batch`` mesh, and global arrays.

One mesh axis, ``batch``, spans every device of every process. Each process produces its own
contiguous part of the global batch (``process_slice``) and ``global_batch`` assembles the
global array with ``jax.make_array_from_process_local_data``; replicated values (the train
state, an on-device data set) use ``replicate``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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
