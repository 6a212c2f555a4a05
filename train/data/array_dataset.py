"""Small data sets held as arrays (and so on device), and their per-epoch shuffle."""

from __future__ import annotations

import dataclasses

import numpy as np

from .errors import DataError


@dataclasses.dataclass
class ArrayDataset:
    """A split held in memory: uint8 NHWC images, int32 labels and the class names."""

    images: np.ndarray  # uint8, (N, H, W, 3)
    labels: np.ndarray  # int32, (N,)
    num_classes: int
    class_names: list[str]

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}."
            )
        if self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"{self.labels.shape[0]} labels for {self.images.shape[0]} images: counts differ."
            )
        self.labels = self.labels.astype(np.int32, copy=False)
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{len(self.class_names)} class names for {self.num_classes} classes.")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of `n` examples for `epoch`: the same for the same (seed, epoch)."""
    if n < 0 or seed < 0 or epoch < 0:
        raise DataError(f"epoch_permutation needs n, seed, epoch >= 0; got {n}, {seed}, {epoch}.")
    return np.random.default_rng((seed, epoch)).permutation(n)
