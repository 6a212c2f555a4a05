"""Random images and labels of any shape, for throughput runs."""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "test")
# Examples per split: 10,000 / 1,000 for small images, fewer at ImageNet sizes to bound memory.
SMALL = {"train": 10_000, "test": 1_000}
LARGE = {"train": 2_048, "test": 512}
LARGE_FROM = 65  # image size at which LARGE applies


def load_fake(
    split: str, image_size: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 (N, S, S, 3), labels int32, class names), a function of (split, seed)."""
    n = (LARGE if image_size >= LARGE_FROM else SMALL)[split]
    rng = np.random.default_rng((seed, SPLITS.index(split)))
    images = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n, dtype=np.int32)
    return images, labels, [f"class_{i}" for i in range(num_classes)]
