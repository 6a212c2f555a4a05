"""What an in-memory loader is asked for, and what it returns: the types the registry and its
loaders share (kept apart from both, so neither imports the other for its types)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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
