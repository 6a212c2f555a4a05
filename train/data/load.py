"""`load_arrays`: any in-memory data set by name, as an ArrayDataset."""

from __future__ import annotations

from collections.abc import Sequence

from .array_dataset import ArrayDataset
from .classes import is_identity, label_map
from .errors import DataError
from .registry import dataset_spec
from .request import Request
from .splits import parse_split, resolve_slice


def load_arrays(
    dataset: str,
    data_dir: str | None,
    split: str,
    image_size: int,
    *,
    num_classes: int | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load a split of `dataset` into memory as uint8 (N, S, S, 3) images and int32 labels.

    dataset: a name in the registry (`train.data.registry.DATASETS`) that has an in-memory
    loader: cifar10, cifar100 (TFDS or the python archive in data_dir, downloaded if absent),
    folder (ImageFolder layout under data_dir; decoded once, then cached), digits (bundled with
    scikit-learn), fake (random; `num_classes` defaults to 1000, `seed` picks the draw).
    split: a split name, optionally sliced: 'train', 'test', 'train[:45000]', 'train[90%:]'.
    num_classes: when given, it must match the data set's class count.
    class_names: label by these classes (another split's, by name; a DataError for a class
    they lack) instead of the split's own.
    Decoding a folder of more than 2,000 images uses worker processes started with "spawn",
    so a script calling this must do so under `if __name__ == "__main__":`.
    """
    spec = dataset_spec(dataset)
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}.")
    if spec.load is None:
        raise DataError(
            f"{dataset} is too large to hold in memory: stream it with make_stream "
            "(the data set's DatasetSpec tells which loader it takes)."
        )
    name, bounds = parse_split(split)
    images, labels, names = spec.load(Request(data_dir, name, image_size, num_classes, seed))
    if class_names is not None and not is_identity(names, class_names):
        labels = label_map(names, class_names, f"{dataset} split {name!r}")[labels]
        names = list(class_names)
    if num_classes is not None and num_classes != len(names):
        raise DataError(
            f"{dataset} {name} has {len(names)} classes but num_classes={num_classes} was asked "
            f"for: set num_classes to {len(names)}."
        )
    index = resolve_slice(bounds, len(labels))
    return ArrayDataset(images[index], labels[index], len(names), list(names))
