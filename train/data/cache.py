"""An on-disk cache of decoded arrays, outside the (possibly read-only) data folder.

Entries live under `$RESNET_FLAX_CACHE` (default `~/.cache/resnet_flax/`), named by a key that
changes whenever the source files do, and are written to a temporary file and renamed, so a
reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable

import numpy as np

from resnet_flax.io import paths as filesystem

# Bump when the decoding changes, so old entries are not reused.
CACHE_VERSION = 1


def cache_dir() -> str:
    """The folder cache entries (and default downloads) go to."""
    return os.environ.get("RESNET_FLAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "resnet_flax"
    )


def fingerprint(paths: Iterable[str], *extra: object) -> str:
    """A key from the files' paths, sizes and mtimes, plus `extra` settings (e.g. image size).
    The files may be local or remote (:mod:`resnet_flax.io.paths`)."""
    digest = hashlib.sha256(repr((CACHE_VERSION, *extra)).encode())
    count = 0
    for path in paths:
        if filesystem.is_local(path):
            stat = os.stat(filesystem.local_path(path))
            size, mtime = stat.st_size, stat.st_mtime_ns
        else:
            stat = filesystem.as_path(path).stat()
            size, mtime = stat.length, stat.mtime
        digest.update(f"{path}\0{size}\0{mtime}\n".encode())
        count += 1
    digest.update(str(count).encode())
    return digest.hexdigest()[:20]


def load(name: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under `name`, or None when there is no such entry."""
    path = os.path.join(cache_dir(), name + ".npz")
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as entry:
        return {key: entry[key] for key in entry.files}


def save(name: str, arrays: dict[str, np.ndarray]) -> str:
    """Store `arrays` under `name` atomically; returns the file written."""
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".npz")
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
