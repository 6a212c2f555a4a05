"""Paths on any filesystem ``etils.epath`` serves: local disks, ``gs://``, ``s3://``, ``az://``,
``hf://``. Every file the package reads or writes outside its caches goes through here.

A remote scheme needs the fsspec library that serves it (``gcsfs`` for ``gs://``, ``s3fs`` for
``s3://``, ...); without it, the error names the package to install. That holds with TensorFlow
installed too: epath would otherwise hand remote paths to ``tf.io.gfile``, which ignores fsspec's
settings (``STORAGE_EMULATOR_HOST``, credentials), so ``EPATH_USE_TF`` is ``false`` unless the
user set it. ``file://`` URLs are local paths. Object stores cannot append to a file, so
:class:`AppendFile` uploads the whole file again on each flush there (as tensorboardX's own
``gs://`` and ``s3://`` writers do).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import urllib.parse
from typing import BinaryIO

from etils import epath

os.environ.setdefault("EPATH_USE_TF", "false")  # read by epath at its first remote path

# scheme -> (the module that serves it, the extra of this package that installs it, if any)
SERVED_BY = {
    "gs": ("gcsfs", "gcs"),
    "s3": ("s3fs", "s3"),
    "az": ("adlfs", None),
    "hf": ("huggingface_hub", None),
}

Path = epath.Path
PathLike = str | os.PathLike


class PathError(ValueError):
    """A path this installation cannot open: an unknown scheme, or its library is missing."""


def scheme(path: PathLike) -> str | None:
    """``"gs"`` for ``gs://bucket/x``; None for a local path."""
    head, sep, _ = os.fspath(path).partition("://")
    return head if sep else None


def is_local(path: PathLike) -> bool:
    return scheme(path) in (None, "file")


def as_path(path: PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: local ones with ``~`` expanded, remote ones checked to have
    the library that serves them."""
    text = os.fspath(path)
    kind = scheme(text)
    if not is_local(text):
        if kind not in SERVED_BY:
            known = ", ".join(f"{s}://" for s in SERVED_BY)
            raise PathError(f"{text}: no filesystem serves {kind}://; use a local path or {known}.")
        module, extra = SERVED_BY[kind]
        if importlib.util.find_spec(module) is None:
            also = f" (or pip install 'resnet-flax[{extra}]')" if extra else ""
            raise PathError(f"{text}: {kind}:// paths need {module}: pip install {module}{also}.")
        return epath.Path(text)
    return epath.Path(local_path(text))


# scheme -> (the variable naming a local server or mirror, the service's default address)
_ENDPOINTS = {
    "gs": ("STORAGE_EMULATOR_HOST", "https://storage.googleapis.com"),
    "s3": ("AWS_ENDPOINT_URL", "https://s3.amazonaws.com"),
}


def check_reachable(path: PathLike, timeout: float = 5.0) -> None:
    """For a ``gs://`` or ``s3://`` path, one connection to the service, within ``timeout``:
    offline, a PathError now, not minutes of the client library's retries later."""
    kind = scheme(path)
    if kind not in _ENDPOINTS:
        return
    variable, default = _ENDPOINTS[kind]
    address = os.environ.get(variable) or default
    parsed = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise PathError(
            f"{os.fspath(path)}: cannot reach {address} ({error.strerror or error}): check the "
            f"network{f' or {variable}' if os.environ.get(variable) else ''}, or use a local "
            f"path."
        ) from None


def local_path(path: PathLike) -> str:
    """A local path as a plain string for ``open``/``os.stat``: ``file://`` dropped, ``~``
    expanded (no epath object: the hot loops that read every image use it)."""
    return os.path.expanduser(os.fspath(path).removeprefix("file://"))


def absolute(path: PathLike) -> epath.Path:
    """:func:`as_path`, made absolute when local (orbax wants absolute checkpoint paths)."""
    path = as_path(path)
    return path if not is_local(path) else epath.Path(os.path.abspath(path))


def list_dir(path: PathLike) -> tuple[list[str], list[str]]:
    """``(folders, files)`` directly in ``path``, sorted: one listing call on an object store
    (``walk``), not one status request per entry."""
    for _, folders, files in as_path(path).walk():
        return sorted(folders), sorted(files)
    return [], []


def check_writable(folder: PathLike) -> epath.Path:
    """Create ``folder`` if need be and write (then delete) a probe file in it; raises the
    ``OSError`` a write there meets, before any long-running work depends on it."""
    folder = as_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def read_bytes(path: PathLike) -> bytes:
    """The file's bytes; a local file is read with ``open`` (the streamed data sets read every
    image through here)."""
    if is_local(path):
        with open(local_path(path), "rb") as file:
            return file.read()
    return as_path(path).read_bytes()


class AppendFile:
    """A binary file that ``write`` appends to and ``flush`` makes durable, on any filesystem.

    Locally it is the file opened in append mode. On an object store the content is kept in
    memory (starting from what the file already holds) and uploaded whole on each flush, so a
    reader sees every flushed write and never half of one.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = as_path(path)
        self._file: BinaryIO | None = None
        self._data = bytearray()
        self._pending = False
        if is_local(self.path):
            self._file = open(self.path, "ab")  # noqa: SIM115 (closed by close())
        elif self.path.exists():
            self._data += self.path.read_bytes()

    def write(self, data: bytes) -> int:
        if self._file is not None:
            return self._file.write(data)
        self._data += data
        self._pending = True
        return len(data)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        elif self._pending:
            self.path.write_bytes(bytes(self._data))
            self._pending = False

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
