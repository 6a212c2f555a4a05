"""Random-access sources of encoded images for streaming, and the per-record grain transforms.

Sources yield {"image": encoded bytes, "label": int, "source": where the image came from};
they pickle small (worker processes get a copy) and open files or TFDS readers only when read.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from .catalog import check_dataset
from .errors import DataError, require_dir
from .folder import FolderListing, folder_splits, list_folder
from .images import eval_crop, train_crop
from .splits import parse_split
from .tfds_source import TfdsUnavailable, open_tfds

# The same split under its TFDS name and its usual ImageFolder name.
_SPLIT_ALIASES = {"validation": "val", "val": "validation"}


class FolderSource:
    """The files of an ImageFolder split, read as bytes."""

    def __init__(self, listing: FolderListing):
        self._root = listing.root
        self._files = np.array([os.fsencode(f) for f in listing.files])  # compact to pickle
        self._labels = listing.labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = os.path.join(self._root, os.fsdecode(self._files[index]))
        with open(path, "rb") as file:
            return {"image": file.read(), "label": int(self._labels[index]), "source": path}


class TfdsSource:
    """A prepared TFDS split with undecoded images, opened lazily in each process."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        self._args = (name, split, data_dir)
        self._source = open_tfds(name, split, data_dir, decode_images=False)
        self._length = len(self._source)

    def __getstate__(self) -> dict[str, Any]:
        return {"_args": self._args, "_length": self._length, "_source": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._source is None:
            self._source = open_tfds(*self._args, decode_images=False)
        record = self._source[index]
        name, split, _ = self._args
        source = f"TFDS {name} {split} record {index}"
        return {"image": record["image"], "label": int(record["label"]), "source": source}


def _decoded(crop: Callable[..., np.ndarray], record: dict[str, Any], *args: Any) -> np.ndarray:
    """crop(record["image"], *args), with a decoding failure naming the image."""
    try:
        return crop(record["image"], *args)
    except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for bad files
        raise DataError(f"Cannot decode {record['source']}: {error}") from error


@dataclasses.dataclass(frozen=True)
class TrainTransform(grain.transforms.RandomMap):
    """Decode, random-resized-crop and flip one record."""

    image_size: int

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        image = _decoded(train_crop, record, self.image_size, rng)
        return {"image": image, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class EvalTransform(grain.transforms.Map):
    """Decode, resize the shorter side to size*256/224 and centre-crop one record."""

    image_size: int

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        image = _decoded(eval_crop, record, self.image_size)
        return {"image": image, "label": np.int32(record["label"]), "mask": np.True_}


@dataclasses.dataclass(frozen=True)
class PaddingRecord(grain.transforms.Map):
    """A blank, masked-out example that fills the last evaluation batch."""

    image_size: int

    def map(self, _: int) -> dict[str, Any]:
        image = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        return {"image": image, "label": np.int32(0), "mask": np.False_}


def _folder_source(data_dir: str | None, split: str) -> FolderSource:
    """An ImageFolder split, taking 'val' for 'validation' (and back) when only that exists."""
    splits = folder_splits(data_dir)
    if split not in splits and _SPLIT_ALIASES.get(split) in splits:
        split = _SPLIT_ALIASES[split]
    return FolderSource(list_folder(data_dir, split))


def open_stream_source(dataset: str, data_dir: str | None, split: str):
    """(source, slice bounds) for a streamed split; errors name the folder and the fix."""
    check_dataset(dataset)
    name, bounds = parse_split(split)
    if dataset == "folder":
        return _folder_source(data_dir, name), bounds
    if dataset != "imagenet2012":
        raise DataError(
            f"{dataset} is held in memory, not streamed: load it with load_arrays "
            "(only imagenet2012 and folder data sets stream)."
        )
    fix = (
        "Point data_dir at a folder holding TFDS imagenet2012 prepared as array_record, or "
        "train/ and val/ in the ImageFolder layout (<split>/<wnid>/<image>.JPEG)."
    )
    data_dir = require_dir(data_dir, "imagenet2012", fix)
    if not os.path.isdir(os.path.join(data_dir, "imagenet2012")):
        return _folder_source(data_dir, name), bounds
    tfds_split = "validation" if name == "val" else name
    try:
        return TfdsSource("imagenet2012", tfds_split, data_dir), bounds
    except TfdsUnavailable as error:
        raise DataError(f"{error}. {fix}") from error
