"""What the data sets are asked for: a :class:`Request` to an in-memory loader (and what it
returns), a :class:`StreamSpec` for a stream and the :class:`StreamInfo` it reports. The
registry, the loaders, the streams and the trainer's input share these types; they live apart
from all of them, so that none imports another for its types (and a stream's spec can be held
without importing grain)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Request:
    """What an in-memory loader is asked for (``split`` is a name, slices already removed)."""

    data_dir: str | None
    split: str
    image_size: int
    num_classes: int | None  # the count the config asks for, if any
    seed: int


# Request -> (uint8 images (N, S, S, 3), int32 labels (N,), class names)
LoadArrays = Callable[[Request], tuple[np.ndarray, np.ndarray, list[str]]]


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """What a stream reads and how, apart from the position in it: a split of a streamed data
    set (``split`` may be a slice, ``'train[:10%]'``), the crop size, whether training crops
    are augmented, the shuffling seed, the decoding processes (0: in this process; ``None``:
    :func:`default_num_workers`), the class list labels index (``None``: the split's own;
    see :mod:`~resnet_flax.train.data.classes`) and whether undecodable images are skipped
    (:mod:`~resnet_flax.train.data.stream`)."""

    dataset: str
    data_dir: str | None
    split: str
    image_size: int
    augment: bool = True
    seed: int = 0
    num_workers: int | None = None
    class_names: tuple[str, ...] | None = None
    skip_bad_images: bool = False


class StreamInfo(NamedTuple):
    """A streamed split's size and classes."""

    size: int
    num_classes: int
    class_names: tuple[str, ...]
