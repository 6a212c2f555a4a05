"""The trainer's data sets: small ones as in-memory arrays augmented on device, ImageNet-size
ones streamed through grain.

Names are imported on first use, so the worker processes that decode images do not pay for
importing JAX and grain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ArrayDataset": "array_dataset",
    "epoch_permutation": "array_dataset",
    "DATASETS": "catalog",
    "NORMALIZATION": "catalog",
    "is_in_memory": "catalog",
    "DataError": "errors",
    "load_arrays": "load",
    "make_stream": "stream",
    "stream_length": "stream",
    "augment_cifar": "augment",
    "crop_and_flip": "augment",
    "normalize": "augment",
}
__all__ = [
    "DATASETS",
    "NORMALIZATION",
    "ArrayDataset",
    "DataError",
    "augment_cifar",
    "crop_and_flip",
    "epoch_permutation",
    "is_in_memory",
    "load_arrays",
    "make_stream",
    "normalize",
    "stream_length",
]

if TYPE_CHECKING:
    from .array_dataset import ArrayDataset, epoch_permutation
    from .augment import augment_cifar, crop_and_flip, normalize
    from .catalog import DATASETS, NORMALIZATION, is_in_memory
    from .errors import DataError
    from .load import load_arrays
    from .stream import make_stream, stream_length


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
