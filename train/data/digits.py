"""scikit-learn's bundled 8x8 handwritten digits, upsampled to RGB images (no download)."""

from __future__ import annotations

import numpy as np

from .images import resize_images
from .request import Request
from .splits import check_split

SPLITS = ("train", "test")
NUM_TRAIN = 1_500
SPLIT_SEED = 0  # fixed: the split never depends on the training seed


def load_digits(request: Request) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, S, S, 3), labels int32, class names): train 1,500, test 297."""
    from sklearn.datasets import load_digits as sklearn_digits

    split = check_split(request.split, SPLITS, "digits")
    bunch = sklearn_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(bunch.target))
    index = order[:NUM_TRAIN] if split == "train" else order[NUM_TRAIN:]
    small = np.round(bunch.images[index] * (255 / 16)).astype(np.uint8)  # values 0..16
    rgb = np.repeat(small[..., None], 3, axis=-1)
    labels = bunch.target[index].astype(np.int32)
    return resize_images(rgb, request.image_size), labels, [str(d) for d in range(10)]
