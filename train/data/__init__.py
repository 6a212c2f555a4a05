"""The trainer's data sets: small ones as in-memory arrays augmented on device, ImageNet-size
ones streamed through grain. Each data set is one entry of the registry
(:mod:`resnet_flax.train.data.registry`).

Names are imported on first use, so the worker processes that decode images do not pay for
importing JAX and grain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ArrayDataset": "array_dataset",
    "epoch_permutation": "array_dataset",
    "DATASETS": "registry",
    "DatasetSpec": "registry",
    "dataset_spec": "registry",
    "DataError": "errors",
    "load_arrays": "load",
    "make_stream": "stream",
    "StreamSpec": "request",
    "default_num_workers": "stream",
    "stream_info": "stream",
    "augment_cifar": "augment",
    "crop_and_flip": "augment",
    "normalize": "augment",
}
__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DataError",
    "DatasetSpec",
    "StreamSpec",
    "augment_cifar",
    "crop_and_flip",
    "dataset_spec",
    "default_num_workers",
    "epoch_permutation",
    "load_arrays",
    "make_stream",
    "normalize",
    "stream_info",
]

if TYPE_CHECKING:
    from .array_dataset import ArrayDataset, epoch_permutation
    from .augment import augment_cifar, crop_and_flip, normalize
    from .errors import DataError
    from .load import load_arrays
    from .registry import DATASETS, DatasetSpec, dataset_spec
    from .request import StreamSpec
    from .stream import default_num_workers, make_stream, stream_info


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
