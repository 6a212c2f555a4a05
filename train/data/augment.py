"""On-device, jittable augmentation and normalisation of uint8 NHWC batches."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def crop_and_flip(
    images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int
) -> jax.Array:
    """Zero-pad by `padding`, crop each image at its (top, left) offset, mirror where `flips`.

    images: (N, H, W, C); offsets: int (N, 2) in [0, 2*padding]; flips: bool (N,).
    """
    _, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)


def augment_cifar(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Random pad-`padding` crop (zero fill, like torchvision's RandomCrop(32, padding=4)) and
    random horizontal flip (p = 0.5) of every image; uint8 in, uint8 out, same shape."""
    crop_key, flip_key = jax.random.split(key)
    n = images.shape[0]
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    return crop_and_flip(images, offsets, flips, padding)


def normalize(
    images_uint8: jax.Array, mean: Sequence[float], std: Sequence[float], dtype: jnp.dtype
) -> jax.Array:
    """(x / 255 - mean) / std per channel, computed in float32, returned as `dtype`."""
    scale = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
    shift = jnp.asarray(mean, jnp.float32) / jnp.asarray(std, jnp.float32)
    return (images_uint8.astype(jnp.float32) * scale - shift).astype(dtype)
