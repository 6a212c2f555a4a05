"""Download one file with a progress bar and an md5 check; nothing half-written is left.
The destination may be remote (:mod:`resnet_flax.io.paths`): the file is uploaded once verified."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request

from tqdm import tqdm

from resnet_flax.io import paths

CHUNK = 1 << 20


class ChecksumError(OSError):
    """The downloaded bytes do not have the expected md5."""


def download_file(url: str, dest: str, md5: str, timeout: float = 30.0) -> str:
    """Fetch `url` to `dest` (via a temporary file in the same folder, renamed when verified)."""
    if not paths.is_local(dest):
        with tempfile.TemporaryDirectory() as folder:
            local = download_file(url, os.path.join(folder, os.path.basename(dest)), md5, timeout)
            remote = paths.as_path(dest)
            remote.parent.mkdir(parents=True, exist_ok=True)
            remote.write_bytes(paths.read_bytes(local))
        return dest
    dest = str(paths.as_path(dest))
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(dest), suffix=".part")
    try:
        digest = hashlib.md5()
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest)) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise ChecksumError(f"{url} has md5 {digest.hexdigest()}, expected {md5}")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest
