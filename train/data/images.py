"""Decoding one image and cropping it to a square: the per-example host work.

Evaluation crops follow torchvision's PIL transforms: one `Image.resize(box=...)` (crop +
antialiased bilinear resize), after `Image.draft`, which lets libjpeg decode a JPEG at 1/2, 1/4
or 1/8 scale in the DCT domain when the crop would be shrunk that much anyway.

Training crops (random-resized crop + flip) are the hot loop of ImageNet training, so they use
OpenCV: libjpeg-turbo decoding, at a reduced scale in the DCT domain when the crop allows it,
and SIMD bilinear resizing. See ``python -m bench --sections loader`` for the speed against
torchvision's PIL transforms, per core.
"""

from __future__ import annotations

import io
import math
import os
import warnings

import cv2
import numpy as np
from PIL import Image

from resnet_flax.io import paths
from resnet_flax.io.transforms import ImageSizeError, check_image_size, to_rgb

cv2.setNumThreads(1)  # one image per worker process; OpenCV's own pool would oversubscribe

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels


def open_image(data: bytes | np.ndarray | str | os.PathLike) -> Image.Image:
    """A lazily decoded PIL image from encoded bytes, a file path (local or remote), or a
    decoded HWC array; one too large to decode is refused from its header
    (:func:`~resnet_flax.io.transforms.check_image_size`)."""
    if isinstance(data, np.ndarray):
        return Image.fromarray(data)
    encoded = data if isinstance(data, bytes) else paths.read_bytes(data)
    try:
        with warnings.catch_warnings():  # Pillow's warning of what the check below refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(encoded))
    except Image.DecompressionBombError as error:
        raise ImageSizeError(str(error)) from None
    check_image_size(*image.size, "the image")
    return image


def crop_resize(image: Image.Image, box: Box, size: int) -> np.ndarray:
    """Crop `box` out of `image` and resize it to (size, size): uint8 (size, size, 3) RGB."""
    width, height = image.size
    if (width, height) == (size, size) and box == (0, 0, size, size):
        return np.asarray(to_rgb(image))
    left, top, right, bottom = box
    request = (
        max(1, math.ceil(width * size / (right - left))),
        max(1, math.ceil(height * size / (bottom - top))),
    )
    drafted = image.draft("RGB", request)  # None for anything but JPEG
    if drafted is not None:
        scale = drafted[1][2] / width
        box = (left * scale, top * scale, right * scale, bottom * scale)
    resized = to_rgb(image).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(resized)


def center_box(width: int, height: int, crop_fraction: float = 1.0) -> Box:
    """The centred square whose side is `crop_fraction` of the shorter side."""
    side = min(width, height) * crop_fraction
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def random_resized_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Box:
    """An Inception-style crop: area a `scale` fraction, aspect ratio log-uniform in `ratio`.

    Ten tries at a box that fits; failing those, the centred box of the whole image clamped
    to the ratio range (the rule torchvision's RandomResizedCrop follows).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return (left, top, left + w, top + h)
    aspect = width / height
    w, h = width, height
    if aspect < ratio[0]:
        h = round(width / ratio[0])
    elif aspect > ratio[1]:
        w = round(height * ratio[1])
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def train_crop(data: bytes | np.ndarray | str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random-resized crop to (size, size) plus a random horizontal flip, as uint8 HWC RGB."""
    if isinstance(data, np.ndarray):
        box = random_resized_box(data.shape[1], data.shape[0], rng)
        pixels, scale = data, 1.0
    else:
        encoded = data if isinstance(data, bytes) else paths.read_bytes(data)
        width, height = open_image(encoded).size  # reads (and checks) the header only
        box = random_resized_box(width, height, rng)
        pixels = _decode_reduced(encoded, _reduction(box, size))
        scale = pixels.shape[1] / width
    left, top, right, bottom = (round(v * scale) for v in box)
    region = pixels[top : max(bottom, top + 1), left : max(right, left + 1)]
    # Bilinear either way: after the DCT-domain reduction a crop shrinks by less than 2x, so
    # every source pixel still contributes (an area filter costs several times more for no
    # visible gain).
    out = cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    return out[:, ::-1] if rng.random() < 0.5 else out


_REDUCED = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2}
_REDUCED |= {4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _reduction(box: Box, size: int) -> int:
    """The largest DCT-domain reduction (1, 2, 4 or 8) that keeps the crop >= size pixels."""
    side = min(box[2] - box[0], box[3] - box[1])
    return max((f for f in _REDUCED if side / f >= size), default=1)


def _decode_reduced(encoded: bytes, factor: int) -> np.ndarray:
    """RGB uint8 HWC at 1/factor scale; EXIF orientation ignored, as PIL (and torchvision)."""
    flags = _REDUCED[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(encoded, np.uint8), flags)
    if pixels is None:
        raise ValueError("OpenCV cannot decode this image (truncated or corrupt?)")
    if factor > 1:  # the reduced modes decode BGR
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels


def eval_crop(data: bytes | np.ndarray | str, size: int, resize_size: int | None = None):
    """Resize the shorter side to `resize_size` (default size*256/224), centre-crop `size`."""
    resize_size = resize_size or round(size * 256 / 224)
    image = open_image(data)
    return crop_resize(image, center_box(*image.size, size / resize_size), size)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (N, h, w, 3) batch to (N, size, size, 3), bilinear, centre-cropped square."""
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([eval_crop(image, size, resize_size=size) for image in images])
