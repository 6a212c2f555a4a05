"""Random-access sources of encoded images for the streamed data sets.

Sources yield {"image": encoded bytes, "label": int, "source": where the image came from,
"index": its position} and know their ``class_names`` and ``num_classes``; they pickle small
(worker processes get a copy) and open files or TFDS readers only when read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from resnet_flax.io import paths

from . import imagenet
from .errors import DataError, require_dir
from .folder import FolderListing, folder_splits, join, list_folder
from .tfds_source import TfdsUnavailable, open_tfds, tfds_class_names

# The same split under its TFDS name and its usual ImageFolder name.
_SPLIT_ALIASES = {"validation": "val", "val": "validation"}


class FolderSource:
    """The files of an ImageFolder split, read as bytes."""

    def __init__(self, listing: FolderListing):
        self._root = listing.root
        self._files = np.array([os.fsencode(f) for f in listing.files])  # compact to pickle
        self._labels = listing.labels
        self.class_names = list(listing.class_names)
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = join(self._root, os.fsdecode(self._files[index]))
        image = paths.read_bytes(path)
        return {"image": image, "label": int(self._labels[index]), "source": path, "index": index}


class TfdsSource:
    """A prepared TFDS split with undecoded images, opened lazily in each process."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        self._args = (name, split, data_dir)
        self._source = open_tfds(name, split, data_dir, decode_images=False)
        self._version = str(self._source.dataset_info.version)  # checked: not again per process
        self._length = len(self._source)
        self.class_names = tfds_class_names(self._source)
        self.num_classes = len(self.class_names)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_source": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._source is None:
            self._source = open_tfds(*self._args, decode_images=False, version=self._version)
        record = self._source[index]
        name, split, _ = self._args
        source = f"TFDS {name} {split} record {index}"
        if "file_name" in record:  # imagenet2012's: the file it was prepared from
            source += f" ({os.fsdecode(record['file_name'])})"
        label = int(record["label"])
        return {"image": record["image"], "label": label, "source": source, "index": index}


def folder_source(data_dir: str | None, split: str) -> FolderSource:
    """An ImageFolder split, taking 'val' for 'validation' (and back) when only that exists."""
    splits = folder_splits(data_dir)
    if split not in splits and _SPLIT_ALIASES.get(split) in splits:
        split = _SPLIT_ALIASES[split]
    return FolderSource(list_folder(data_dir, split))


def imagenet_source(data_dir: str | None, split: str) -> FolderSource | TfdsSource:
    """ImageNet from TFDS ``imagenet2012`` prepared as array_record in ``data_dir``, else the
    ImageFolder layout there; errors say what is missing and how to prepare it."""
    either = (
        "Point data_dir at a folder holding TFDS imagenet2012 prepared as array_record, or "
        "train/ and val/ in the ImageFolder layout (<split>/<wnid>/<image>.JPEG)."
    )
    data_dir = require_dir(data_dir, imagenet.NAME, f"{either} {imagenet.how_to_prepare('DIR')}")
    if paths.as_path(join(data_dir, imagenet.NAME)).is_dir():
        try:
            return TfdsSource(imagenet.NAME, "validation" if split == "val" else split, data_dir)
        except TfdsUnavailable as error:
            raise DataError(f"{error}. {imagenet.how_to_prepare(data_dir)}") from error
    if not folder_splits(data_dir):
        raise DataError(
            f"{data_dir} holds neither TFDS {imagenet.NAME}/ nor train/ and val/ folders. "
            f"{either} {imagenet.how_to_prepare(data_dir)}"
        )
    try:
        return folder_source(data_dir, split)
    except DataError as error:
        manual = imagenet.default_manual_dir(data_dir)
        if archives := imagenet.archives_in(manual):
            raise DataError(
                f"{data_dir} holds {' and '.join(archives.values())} in {manual}, not yet "
                "prepared: run "
                f"{imagenet.prepare_command(data_dir)}."
            ) from error
        raise DataError(f"{error} {either}") from error
