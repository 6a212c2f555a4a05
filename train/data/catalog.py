"""Which data sets exist, their normalisation constants, and whether they fit in memory."""

from __future__ import annotations

from .errors import unknown_choice

Triple = tuple[float, float, float]

IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
HALF: Triple = (0.5, 0.5, 0.5)

# Per-channel mean and std in [0, 1] units.
NORMALIZATION: dict[str, tuple[Triple, Triple]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),
    "digits": (HALF, HALF),
    "fake": (HALF, HALF),
}
DATASETS = tuple(NORMALIZATION)

# Largest image size at which an ImageFolder data set is decoded into memory.
MAX_IN_MEMORY_FOLDER_SIZE = 64


def check_dataset(dataset: str) -> str:
    """Return `dataset` if it is a known name, else raise a DataError suggesting close ones."""
    if dataset not in NORMALIZATION:
        raise unknown_choice("dataset", dataset, DATASETS)
    return dataset


def is_in_memory(dataset: str, image_size: int) -> bool:
    """Whether `dataset` at `image_size` is loaded with `load_arrays` rather than streamed."""
    check_dataset(dataset)
    if dataset == "imagenet2012":
        return False
    if dataset == "folder":
        return image_size <= MAX_IN_MEMORY_FOLDER_SIZE
    return True
