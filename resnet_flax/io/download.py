"""The one download: a file from a URL, with a progress bar, checked against a hash.

The bytes go to a temporary file of a name of its own in the destination's folder, are hashed
as they arrive, and only a file whose length and hash are right is renamed into place (an
atomic rename), so nothing half-written or corrupt is ever found at the destination, and two
downloads of one file at once cannot spoil each other. A destination on a remote filesystem
(:mod:`resnet_flax.io.paths`) is uploaded once verified. A file of a Hugging Face hub
repository (timm's weights, transformers' ResNets) comes through ``huggingface_hub`` instead
(:func:`hub_file`), which keeps its own cache, as timm and transformers fetch them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from resnet_flax.io import paths

CHUNK = 1 << 20


class ChecksumError(OSError):
    """A file whose bytes do not hash to the digest recorded for them: a download, or a file
    of a saved checkpoint. ``actual`` is the digest found (``None``: the file was missing or
    unreadable)."""

    def __init__(self, message: str, actual: str | None = None):
        super().__init__(message)
        self.actual = actual


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    algorithm: str,
    expected: str,
    progress: bool = True,
    timeout: float = 60.0,
) -> str:
    """Fetch ``url`` to ``dest``; returns ``dest``.

    ``expected`` is the file's ``algorithm`` (``"sha256"``, ``"md5"``) hex digest, or a prefix
    of it (torchvision names its files by the first 8 digits of their sha256). Raises
    :class:`ChecksumError` if the bytes differ, ``OSError`` (``urllib.error.URLError`` among
    them) if the download fails or stops short; either way nothing is kept.
    """
    if not paths.is_local(dest):
        with tempfile.TemporaryDirectory() as folder:
            local = os.path.join(folder, os.path.basename(os.fspath(dest)))
            download(url, local, algorithm=algorithm, expected=expected, progress=progress,
                     timeout=timeout)  # fmt: skip
            remote = paths.as_path(dest)
            remote.parent.mkdir(parents=True, exist_ok=True)
            remote.write_bytes(paths.read_bytes(local))
        return os.fspath(dest)
    path = Path(paths.as_path(dest))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest = hashlib.new(algorithm)
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise OSError(f"the download stopped at {received} of {total} bytes")
        actual = digest.hexdigest()
        if not actual.startswith(expected.lower()):
            raise ChecksumError(
                f"{url}: its {algorithm} is {actual[:16]}..., but {expected} was expected",
                actual,
            )
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return os.fspath(dest)


class WeightsError(ValueError):
    """Unknown weights, or weights that cannot be fetched or verified; says what to do."""


def hub_file(repository: str, file: str, *, refresh: bool = False, what: str = "") -> Path:
    """The local copy of ``file`` of a Hugging Face hub ``repository``, fetched through
    huggingface_hub (its cache, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT``); a
    :class:`WeightsError` naming the file otherwise."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsError(
            f"{what or repository} on the Hugging Face hub: pip install 'resnet-flax[hub]' "
            f"(huggingface_hub)."
        ) from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        return Path(hf_hub_download(repository, file, endpoint=endpoint, force_download=refresh))
    except Exception as error:  # huggingface_hub's HTTP, offline and cache errors
        raise WeightsError(
            f"cannot fetch {repository}/{file} from the Hugging Face hub "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). "
            f"Offline, HF_HUB_OFFLINE=1 uses huggingface_hub's cache; HF_ENDPOINT names a mirror."
        ) from None
