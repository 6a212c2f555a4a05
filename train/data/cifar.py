"""CIFAR-10 and CIFAR-100: from prepared TFDS, else the official python archive (downloaded
once with its md5 checked when the network allows). The data_dir may be local or remote
(:mod:`resnet_flax.io.paths`)."""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import zlib

import numpy as np
from tqdm import tqdm

from resnet_flax.io import paths
from resnet_flax.io.download import download

from . import cache
from .errors import DataError
from .images import resize_images
from .request import Request
from .splits import check_split
from .tfds_source import TfdsUnavailable, open_tfds, tfds_class_names

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class CifarFiles:
    """Where one CIFAR variant lives in its official python archive."""

    title: str
    archive: str
    folder: str  # the archive's top folder (what torchvision leaves on disk)
    url: str
    md5: str
    members: dict[str, tuple[str, ...]]  # split -> batch files
    meta: str
    label_key: bytes
    names_key: bytes


# URLs and md5s as in torchvision.datasets.CIFAR10 / CIFAR100.
CIFAR = {
    "cifar10": CifarFiles(
        title="CIFAR-10",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        members={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
    ),
    "cifar100": CifarFiles(
        title="CIFAR-100",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        members={"train": ("train",), "test": ("test",)},
        meta="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
    ),
}

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array-rebuild function, whatever its module
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # pickles from numpy < 2
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a batch file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} has no place in a CIFAR batch file")
        return _ALLOWED_GLOBALS[(module, name)]


def _unpickle(data: bytes, where: str) -> dict:
    try:
        return _ArraysOnly(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{where} is not a CIFAR python batch file ({error}).") from error


def default_root() -> str:
    """Where CIFAR archives go when no data_dir is given."""
    return os.path.join(cache.cache_dir(), "datasets")


def _read_members(files: CifarFiles, root: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The raw bytes of `wanted` batch files, from the extracted folder or the archive."""
    folder = paths.as_path(root) / files.folder
    if folder.is_dir():
        found = {}
        for name in wanted:
            path = folder / name
            if not path.is_file():
                raise DataError(f"{path} is missing: re-extract {files.archive} into {root}.")
            found[name] = path.read_bytes()
        return found
    archive = paths.as_path(root) / files.archive
    _check_md5(archive, files)
    try:
        with archive.open("rb") as file, tarfile.open(fileobj=file, mode="r:gz") as tar:
            found = {}
            for member in tar:
                top, _, name = member.name.partition("/")
                if top == files.folder and name in wanted and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:  # EOFError: cut short
        raise DataError(f"Cannot read {archive} ({error}): delete it to fetch it again.") from error
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise DataError(f"{archive} lacks {files.folder}/{missing[0]}: it is not {files.archive}.")
    return found


def _check_md5(archive: paths.Path, files: CifarFiles) -> None:
    """The archive's md5 against the published one, as torchvision checks it."""
    digest = hashlib.md5()
    with archive.open("rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != files.md5:
        raise DataError(
            f"{archive} has md5 {digest.hexdigest()}, but {files.archive} has {files.md5}: it is "
            f"damaged or another file. Delete it to fetch it again (from {files.url})."
        )


def _fetch_archive(dataset: str, root: str, tfds_reason: str) -> None:
    """Download the archive into `root`, or raise a DataError saying what to put where."""
    files = CIFAR[dataset]
    dest = str(paths.as_path(root) / files.archive)
    try:
        download(files.url, dest, algorithm="md5", expected=files.md5)
    except OSError as error:
        raise DataError(
            f"{files.title} not found and could not be downloaded ({error}). Put {files.archive} "
            f"(from {files.url}, md5 {files.md5}) at {dest}, or its extracted folder "
            f"{files.folder}/ in {root}. TFDS {dataset!r} prepared as array_record in that "
            f"data_dir also works ({tfds_reason}), and so do the same images as an ImageFolder "
            f"tree: --config.dataset=folder --config.data_dir=DIR (DIR/train/CLASS/IMAGE)."
        ) from error


def _from_tfds(dataset: str, split: str, data_dir: str | None):
    source = open_tfds(dataset, split, data_dir)
    images = np.empty((len(source), 32, 32, 3), np.uint8)
    labels = np.empty(len(source), np.int32)
    for i in tqdm(range(len(source)), desc=f"Reading TFDS {dataset} {split}", leave=False):
        record = source[i]
        images[i] = record["image"]
        labels[i] = record["label"]
    return images, labels, tfds_class_names(source)


def load_cifar(dataset: str, data_dir: str | None, split: str):
    """(images uint8 (N, 32, 32, 3), labels int32, class names) of a CIFAR split."""
    try:
        return _from_tfds(dataset, split, data_dir)
    except TfdsUnavailable as unavailable:
        tfds_reason = str(unavailable)
    files = CIFAR[dataset]
    root = data_dir or default_root()
    extracted = (paths.as_path(root) / files.folder).is_dir()
    if not (extracted or (paths.as_path(root) / files.archive).is_file()):
        _fetch_archive(dataset, root, tfds_reason)
    raw = _read_members(files, root, (*files.members[split], files.meta))
    batches = [_unpickle(raw[name], f"{root}: {name}") for name in files.members[split]]
    meta = _unpickle(raw[files.meta], f"{root}: {files.meta}")
    try:
        data = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[files.label_key], np.int32) for b in batches])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[files.names_key]]
    except (KeyError, TypeError) as error:
        raise DataError(f"{root}: a {files.title} batch file lacks {error}.") from error
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels, names


def load_split(dataset: str, request: Request):
    """A CIFAR split at the requested image size, for the data-set registry."""
    split = check_split(request.split, SPLITS, dataset)
    images, labels, names = load_cifar(dataset, request.data_dir, split)
    return resize_images(images, request.image_size), labels, names
