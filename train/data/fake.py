"""Random images and labels of any shape, for throughput runs."""

from __future__ import annotations

import numpy as np

from .request import Request
from .splits import check_split

SPLITS = ("train", "test")
# Examples per split: 10,000 / 1,000 for small images, fewer at ImageNet sizes to bound memory.
SMALL = {"train": 10_000, "test": 1_000}
LARGE = {"train": 2_048, "test": 512}
LARGE_FROM = 65  # image size at which LARGE applies


def load_fake(request: Request) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, S, S, 3), labels int32, class names), a function of (split, seed);
    as many classes as requested, 1000 by default."""
    split = check_split(request.split, SPLITS, "fake")
    image_size, num_classes = request.image_size, request.num_classes or 1000
    n = (LARGE if image_size >= LARGE_FROM else SMALL)[split]
    rng = np.random.default_rng((request.seed, SPLITS.index(split)))
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n, dtype=np.int32)
    return images, labels, [f"class_{i}" for i in range(num_classes)]
