"""One trainer per workdir: ``WORKDIR/.lock`` names the process that trains there.

Two trainers on one workdir would race in orbax's temporary directories and write every
metric twice. The lock is a file created exclusively, holding the holder's pid and host; a
second trainer gets an error naming them. A lock left by a process that died on this host
(its pid is gone) is taken over with a warning; one from another host cannot be checked from
here, so the error says to delete it if that run is over. With several processes, process 0
holds it for the run. On an object store the file is checked, then written (no exclusive
create there): two launches within the same second can still both start.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from typing import Any

import jax

from resnet_flax.io import paths

LOCK_FILE = ".lock"


class WorkdirLocked(ValueError):
    """Another trainer holds the workdir."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir):`` (or ``acquire()`` ... ``release()``) train there, alone."""

    def __init__(self, workdir: paths.PathLike) -> None:
        self.path = paths.as_path(workdir) / LOCK_FILE
        self._held = False

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (process 0 of a multi-process run; the others hold nothing). Call
        after multi-process JAX has started."""
        if jax.process_index() != 0:
            return
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create(me):
                self._held = True
                return
            holder = self._holder()
            if holder is None:  # being written right now, or just released
                time.sleep(0.1)
                continue
            same_host = holder.get("host") == me["host"]
            if same_host and (holder.get("pid") == me["pid"] or not _alive(holder["pid"])):
                warnings.warn(
                    f"{self.path}: taking over the lock of process {holder.get('pid')}, which "
                    f"is no longer running on this host.",
                    stacklevel=3,
                )
                self.path.unlink(missing_ok=True)
                continue
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
            raise WorkdirLocked(
                f"{self.path.parent} is in use by process {holder.get('pid')} on host "
                f"{holder.get('host')} (since {since}): wait for it, stop it, or choose another "
                f"--workdir. If that run is over, delete {self.path}."
            )
        raise WorkdirLocked(f"could not take the lock {self.path}: delete it if no run holds it.")

    def _create(self, me: dict[str, Any]) -> bool:
        data = json.dumps(me).encode()
        if not paths.is_local(self.path):
            if self.path.exists():
                return False
            self.path.write_bytes(data)
            return True
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return True

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
