"""torchvision's ImageNet evaluation transforms, in NumPy and PIL, exactly: decode to 8-bit RGB,
resize the shorter side, centre-crop, normalise.

:class:`EvalTransform` is one such setting; every published weights entry carries its own
(``resnet_flax.io.weights.Weights.transforms()``), and ``resnet_flax.preprocess`` applies one.
The ImageNet mean and std live here, below everything that uses them. PIL and NumPy only.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

Triple = tuple[float, float, float]
# ImageNet's per-channel mean and std in [0, 1] units: the one place the package keeps them.
IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

ImageLike = Image.Image | str | os.PathLike


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Longer side over shorter side. Panoramas stay well below; past it, resizing the shorter side
# to a crop size makes a strip of millions of pixels (1x20000 to 256x5,120,000: 3.9 GB).
MAX_ASPECT_RATIO = 50


class ImageSizeError(ValueError):
    """An image too large to decode, or too elongated to resize, within bounded memory."""


def check_image_size(width: int, height: int, where: str, resize_size: int = 0) -> None:
    """Refuse an image whose decoding or resizing (shorter side to ``resize_size``) would
    allocate more than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``
    pixels), or whose aspect ratio exceeds :data:`MAX_ASPECT_RATIO`; the error names it."""
    limit = Image.MAX_IMAGE_PIXELS
    if min(width, height) < 1:
        raise ImageSizeError(f"{where}: {width}x{height} pixels is an empty image.")
    if limit and width * height > limit:
        raise ImageSizeError(
            f"{where}: {width}x{height} pixels ({width * height / 1e6:.0f} megapixels) is more "
            f"than Pillow's decompression-bomb limit of {limit / 1e6:.0f} (PIL.Image."
            f"MAX_IMAGE_PIXELS): shrink the image first, or raise that limit if you trust it."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageSizeError(
            f"{where}: {width}x{height} pixels has an aspect ratio of {ratio:.0f}:1, more than "
            f"{MAX_ASPECT_RATIO}:1: crop it to the part to classify."
        )
    if limit and resize_size**2 * ratio > limit:
        raise ImageSizeError(
            f"{where}: resizing the shorter side of {width}x{height} pixels to {resize_size} "
            f"makes {resize_size**2 * ratio / 1e6:.0f} megapixels, more than Pillow's limit of "
            f"{limit / 1e6:.0f}: use a smaller resize size."
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit images (a 16-bit grayscale PNG opens as ``I;16``) keep
    their high byte, as OpenCV decodes them: PIL's ``convert("RGB")``, which torchvision's
    loader uses, clips them to 255 instead, and such an image comes out nearly all white."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise ValueError(
            "32-bit floating-point images have no standard 8-bit scaling: convert the file "
            "to 8 or 16 bits per channel."
        )
    return image.convert("RGB")


def load_image(source: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image or an image file (grayscale, palette, RGBA, 16-bit:
    to 8-bit RGB, see :func:`to_rgb`).

    Raises ``FileNotFoundError``/``OSError`` naming the file when it is missing or unreadable,
    :class:`ImageSizeError` when it is too large to decode (:func:`check_image_size`).
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    path = os.fspath(source)
    try:
        with warnings.catch_warnings():  # Pillow's warning of what the check below refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            check_image_size(*image.size, repr(path))  # the header only, so far
            image.load()  # read before the file closes: an RGB image is returned as it is
            return to_rgb(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path!r}; check the path") from None
    except IsADirectoryError:
        raise IsADirectoryError(
            f"{path!r} is a directory, not an image: name the image files in it"
        ) from None
    except Image.DecompressionBombError as e:
        raise ImageSizeError(f"{path!r}: {e}") from None
    except OSError as e:
        raise OSError(f"cannot read {path!r} as an image: {e}") from None


def resize_shorter_side(
    image: Image.Image, size: int, interpolation: str = "bilinear"
) -> Image.Image:
    """torchvision's ``Resize(size)``: the shorter side becomes ``size``, aspect ratio kept."""
    width, height = image.size
    short, long = sorted((width, height))
    new_short, new_long = size, int(size * long / short)
    new = (new_short, new_long) if width <= height else (new_long, new_short)
    if new == image.size:
        return image
    return image.resize(new, _RESAMPLING[interpolation])


def center_crop(array: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``CenterCrop(size)`` on an HWC array: zero-pads first if it is too small."""
    height, width = array.shape[:2]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        pads = ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0))
        array = np.pad(array, pads)
        height, width = array.shape[:2]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return array[top : top + size, left : left + size]


def eval_transform(
    images: ImageLike | Sequence[ImageLike],
    resize_size: int = 256,
    crop_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """A float32 NHWC batch from PIL images or image files, as torchvision's eval transforms:
    ``Compose([Resize(resize_size), CenterCrop(crop_size), ToTensor(), Normalize(mean, std)])``
    on PIL input, transposed to NHWC."""
    if interpolation not in _RESAMPLING:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; choose one of {', '.join(_RESAMPLING)}"
        )
    for name, value in (("resize_size", resize_size), ("crop_size", crop_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(images, Image.Image | str | os.PathLike):
        images = [images]
    if not images:
        raise ValueError("preprocess needs at least one image")
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    batch = []
    for source in images:
        image = load_image(source)
        where = repr(os.fspath(source)) if not isinstance(source, Image.Image) else "an image"
        check_image_size(*image.size, where, resize_size)
        image = resize_shorter_side(image, resize_size, interpolation)
        pixels = center_crop(np.asarray(image), crop_size).astype(np.float32) / np.float32(255)
        batch.append((pixels - mean32) / std32)
    return np.stack(batch)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """One evaluation transform: :func:`eval_transform` with these settings, called on images
    (what a published weights entry's ``transforms()`` returns)."""

    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        return eval_transform(images, **dataclasses.asdict(self))


# torchvision's two evaluation presets for its ImageNet weights.
PRESETS: dict[str, EvalTransform] = {"V1": EvalTransform(256, 224), "V2": EvalTransform(232, 224)}
