"""Decode a whole ImageFolder split into arrays (small images), cached as `.npz` for reuse."""

from __future__ import annotations

import functools
import multiprocessing
import os
import posixpath
import warnings

import numpy as np
from tqdm import tqdm

from resnet_flax.io import paths as filesystem

from . import cache
from .errors import decoded
from .folder import FolderListing, list_folder
from .images import eval_crop
from .request import Request

# Below this many files, decoding in this process beats starting worker processes.
POOL_THRESHOLD = 2_000
CHUNK = 256


def _decode(path: str, size: int) -> np.ndarray:
    return decoded(_read_and_crop, path, path, size)


def _read_and_crop(path: str, size: int) -> np.ndarray:
    return eval_crop(filesystem.read_bytes(path), size, resize_size=size)


def decode_all(paths: list[str], size: int, workers: int | None = None) -> np.ndarray:
    """Decode `paths` to uint8 (N, size, size, 3) (shorter side resized, centre-cropped)."""
    decode = functools.partial(_decode, size=size)
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(paths), desc=f"Decoding {len(paths)} images", unit="img", leave=False)
    if workers == 1 or len(paths) < POOL_THRESHOLD:
        return np.stack([decode(p) for p in tqdm(paths, **bar)])
    # spawn, not fork: the caller may hold JAX's threads, which do not survive a fork.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return np.stack(list(tqdm(pool.imap(decode, paths, chunksize=CHUNK), **bar)))


def load_folder_arrays(request: Request) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images, labels, class_names) of a folder split, from the cache when it is current."""
    split, image_size = request.split, request.image_size
    listing: FolderListing = list_folder(request.data_dir, split)
    paths = listing.paths()
    root = str(filesystem.absolute(listing.root))
    key = cache.fingerprint(paths, root, image_size)
    name = f"folder-{posixpath.basename(posixpath.dirname(root))}-{split}-{image_size}px-{key}"
    entry = cache.load(name)
    if entry is not None:
        return entry["images"], entry["labels"], [str(c) for c in entry["class_names"]]
    images = decode_all(paths, image_size)
    names = np.array(listing.class_names)
    try:
        cache.save(name, {"images": images, "labels": listing.labels, "class_names": names})
    except OSError as error:
        warnings.warn(f"Not caching decoded images in {cache.cache_dir()}: {error}", stacklevel=2)
    return images, listing.labels, listing.class_names
