"""The ImageFolder layout, `<data_dir>/<split>/<class>/<image>`: finding splits, classes, files.

Class index = position of the class folder's name in sorted order, and images anywhere below a
class folder (subfolders included) belong to it, as in torchvision.
"""

from __future__ import annotations

import dataclasses
import posixpath

import numpy as np

from resnet_flax.io import paths

from .errors import DataError, require_dir
from .splits import check_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "Lay images out as <data_dir>/<split>/<class>/<image> (the ImageFolder layout)."


@dataclasses.dataclass(frozen=True)
class FolderListing:
    """Every image file of one split, in a fixed order (class, then file name)."""

    root: str  # the split folder (local, or a URL such as gs://bucket/imagenet/train)
    class_names: list[str]
    files: list[str]  # paths relative to root, "/"-separated
    labels: np.ndarray  # int32

    def paths(self) -> list[str]:
        """Full paths of the files."""
        return [join(self.root, f) for f in self.files]


def join(root: str, name: str) -> str:
    """``root/name`` for a local path or a URL alike."""
    return posixpath.join(root, name)


def _visible_dirs(path: str) -> list[str]:
    return [name for name in paths.list_dir(path)[0] if not name.startswith(".")]


def _images_below(folder: str) -> list[str]:
    """Image files below ``folder``, subfolders included (hidden ones skipped), as sorted
    ``/``-separated paths relative to it."""
    found, pending = [], [""]
    while pending:
        inner = pending.pop()
        dirs, files = paths.list_dir(join(folder, inner) if inner else folder)
        prefix = f"{inner}/" if inner else ""
        found += [prefix + f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
        pending += [prefix + d for d in dirs if not d.startswith(".")]
    return sorted(found)


def folder_splits(data_dir: str) -> list[str]:
    """The split folders under `data_dir`."""
    return _visible_dirs(require_dir(data_dir, "Image folder", LAYOUT))


def list_folder(data_dir: str | None, split: str) -> FolderListing:
    """List the images of `split` under `data_dir`; errors name the folder and the fix."""
    data_dir = require_dir(data_dir, "The 'folder' data set", LAYOUT)
    split = check_split(split, folder_splits(data_dir), f"split folders in {data_dir}")
    root = join(data_dir, split)
    class_names = _visible_dirs(root)
    if not class_names:
        raise DataError(f"{root} has no class folders. {LAYOUT}")
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for index, name in enumerate(class_names):
        found = _images_below(join(root, name))
        if not found:
            empty.append(name)
        files.extend(f"{name}/{f}" for f in found)
        labels.extend([index] * len(found))
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(
            f"No images ({'/'.join(IMAGE_EXTENSIONS)}) in {len(empty)} class folder(s) of "
            f"{root}: {shown}. Put images in every class folder or remove the empty ones."
        )
    return FolderListing(root, class_names, files, np.asarray(labels, dtype=np.int32))
