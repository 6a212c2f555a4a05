"""Images in: ``preprocess`` (torchvision's evaluation transforms, or those of a published
weights entry by its tag) and the ImageNet class names. The transforms themselves are
:mod:`resnet_flax.io.transforms`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

import numpy as np

from resnet_flax.io.hub import resolve
from resnet_flax.io.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageLike, eval_transform


@functools.cache
def _classes() -> tuple[str, ...]:
    text = (
        resources.files("resnet_flax.inference").joinpath("imagenet_classes.txt").read_text("utf-8")
    )
    return tuple(text.splitlines())


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, in torchvision's index order."""
    return list(_classes())


def preprocess(
    images: ImageLike | Sequence[ImageLike],
    resize_size: int = 256,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    *,
    weights: str | None = None,
) -> np.ndarray:
    """A float32 NHWC batch from PIL images or image files, as torchvision's eval transforms.

    Equals ``Compose([Resize(resize_size), CenterCrop(crop_size), ToTensor(),
    Normalize(mean, std)])`` (and ``weights.transforms()``) on PIL input, transposed to NHWC.
    ``weights``: a weights tag (``"resnet50.tv2_in1k"``, ``"resnet50.a1_in1k"``) whose
    evaluation transform to apply instead of the settings.
    """
    if weights is not None:
        given = (resize_size, crop_size, tuple(mean), tuple(std), interpolation)
        if given != (256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"):
            raise ValueError("pass weights= or the transform's settings, not both")
        return resolve(weights).transforms()(images)
    return eval_transform(images, resize_size, crop_size, mean, std, interpolation)
