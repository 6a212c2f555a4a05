"""Every data set the trainer knows, one :class:`DatasetSpec` each: the one place to add one.

A spec holds what the rest of the trainer needs to know about a data set: its normalisation,
its class count, and how it is read, into memory (``load``: small images, kept on the devices
and augmented there) or streamed (``stream``: a random-access source of encoded images, decoded
by grain workers). A data set with both is held in memory up to ``max_in_memory_size`` pixels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from resnet_flax.io.transforms import IMAGENET_MEAN, IMAGENET_STD, Triple

from . import cifar, digits, fake
from .errors import unknown_choice
from .folder_arrays import load_folder_arrays
from .request import LoadArrays
from .sources import folder_source, imagenet_source

HALF: Triple = (0.5, 0.5, 0.5)


# (data_dir, split name) -> a random-access source with __len__, __getitem__ and num_classes
OpenSource = Callable[[str | None, str], Any]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One data set: its normalisation, class count and loader(s)."""

    name: str
    mean: Triple  # per channel, in [0, 1] units
    std: Triple
    num_classes: int | None  # None: as many as the data has (class folders) or as asked (fake)
    load: LoadArrays | None = None
    stream: OpenSource | None = None
    max_in_memory_size: int = 0  # with both loaders: the largest image size held in memory
    layout: str = ""  # data sets read from files only (data_dir required): what it holds

    def in_memory(self, image_size: int) -> bool:
        """Whether the data set at ``image_size`` is held in memory rather than streamed."""
        if self.load is None or self.stream is None:
            return self.load is not None
        return image_size <= self.max_in_memory_size


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "cifar10",
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            10,
            load=functools.partial(cifar.load_split, "cifar10"),
        ),
        DatasetSpec(
            "cifar100",
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            100,
            load=functools.partial(cifar.load_split, "cifar100"),
        ),
        DatasetSpec(
            "folder",
            IMAGENET_MEAN,
            IMAGENET_STD,
            None,
            load=load_folder_arrays,
            stream=folder_source,
            max_in_memory_size=64,
            layout="SPLIT/CLASS/IMAGE (the ImageFolder layout)",
        ),
        DatasetSpec(
            "imagenet2012",
            IMAGENET_MEAN,
            IMAGENET_STD,
            1000,
            stream=imagenet_source,
            layout="TFDS imagenet2012 prepared as array_record, or train/ and val/ folders",
        ),
        DatasetSpec("digits", HALF, HALF, 10, load=digits.load_digits),
        DatasetSpec("fake", HALF, HALF, None, load=fake.load_fake),
    )
}


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of data set ``name``; a DataError suggesting close names if there is none."""
    if name not in DATASETS:
        raise unknown_choice("dataset", name, DATASETS)
    return DATASETS[name]
