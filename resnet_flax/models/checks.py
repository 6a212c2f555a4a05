"""Input and option checks, so bad input fails early with a message that names the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import jax


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'a' or 'b'?`` for the choices close to ``word``, else ``""``: the one
    way every error message in the package suggests a spelling."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_images(
    x: jax.Array,
    model: str,
    channels: int,
    min_size: int = 1,
    exact_size: int | None = None,
) -> None:
    """Raise ``ValueError`` unless ``x`` is an NHWC batch the model can take."""
    shape = tuple(x.shape)
    if len(shape) != 4:
        raise ValueError(
            f"{model} expects NHWC images of rank 4 (batch, height, width, {channels}); got "
            f"shape {shape}. Add a batch axis with x[None] for a single image, or transpose "
            f"NCHW input with x.transpose(0, 2, 3, 1)."
        )
    if shape[-1] != channels:
        hint = (
            " (NCHW input? transpose with x.transpose(0, 2, 3, 1))" if shape[1] == channels else ""
        )
        raise ValueError(
            f"{model} expects {channels} channels in the last axis (NHWC); got shape {shape}{hint}."
        )
    h, w = shape[1:3]
    if exact_size is not None and (h, w) != (exact_size, exact_size):
        raise ValueError(f"{model} takes {exact_size}x{exact_size} images; got {h}x{w}.")
    if min(h, w) < min_size:
        raise ValueError(f"{model} needs images of at least {min_size}x{min_size}; got {h}x{w}.")


def check_options(module: Any) -> None:
    """Check the options every classifier shares (``num_classes``, ``in_channels``)."""
    name = type(module).__name__
    for option in ("num_classes", "in_channels"):
        value = getattr(module, option, None)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name}: {option} must be a positive integer; got {value!r}.")
