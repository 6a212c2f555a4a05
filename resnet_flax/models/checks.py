"""Input and option checks, so bad input fails early with a message that names the fix."""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_flax.models.layers import impl_names


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
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{model} takes normalised floating-point images; got {x.dtype}. Convert and "
            f"normalise first, e.g. (x / 255 - mean) / std as float32 "
            f"(resnet_flax.preprocess does it for image files)."
        )
    h, w = shape[1:3]
    if exact_size is not None and (h, w) != (exact_size, exact_size):
        raise ValueError(f"{model} takes {exact_size}x{exact_size} images; got {h}x{w}.")
    if min(h, w) < min_size:
        raise ValueError(f"{model} needs images of at least {min_size}x{min_size}; got {h}x{w}.")


_FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")


def check_options(module: Any) -> None:
    """:func:`check_model_options` on a module's own fields (a model built directly)."""
    fields = module.__dataclass_fields__.values()
    options = {f.name: getattr(module, f.name) for f in fields}
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    check_model_options(type(module).__name__, options, defaults)


def _positive_int(value: Any) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool | np.bool_)
        and (value > 0)
    )


def check_model_options(
    model: str, options: dict[str, Any], defaults: dict[str, Any] | None = None
) -> None:
    """Raise ``ValueError`` naming the first option of ``model`` that JAX would trip over (or,
    worse, accept): counts, booleans (an option whose default in ``defaults`` is one), dilation
    flags, dtype, dropout rate."""

    def bad(option: str, value: Any, expected: str) -> ValueError:
        return ValueError(f"{model}: {option} must be {expected}; got {value!r}.")

    for option, default in (defaults or {}).items():
        value = options.get(option, default)
        if isinstance(default, bool) and not isinstance(value, bool | np.bool_):
            raise bad(option, value, "True or False")  # "no" and "off" are truthy strings

    counts = (
        "num_classes",
        "in_channels",
        "groups",
        "width_per_group",
        "stem_width",
        "width_factor",
        "block_reduce_first",
        "down_kernel_size",
    )
    for option in counts:
        if option in options and not _positive_int(options[option]):
            raise bad(option, options[option], "a positive integer")
    widths = options.get("widths")
    if widths is not None and not (
        isinstance(widths, list | tuple) and widths and all(_positive_int(w) for w in widths)
    ):
        raise bad("widths", widths, "a sequence of positive integers")
    dilation = options.get("replace_stride_with_dilation")
    if dilation is not None and "stage_sizes" in options:
        stages = len(options["stage_sizes"])
        if not (
            isinstance(dilation, list | tuple)
            and len(dilation) == stages - 1
            and all(isinstance(d, bool) for d in dilation)
        ):
            raise bad(
                "replace_stride_with_dilation", dilation,
                f"None or {stages - 1} booleans, one per stage after the first",
            )  # fmt: skip
    if "dtype" in options:
        try:
            name = jnp.dtype(options["dtype"]).name
        except TypeError:
            name = None
        if name not in _FLOAT_DTYPES:
            raise bad(
                "dtype", options["dtype"], f"a floating-point dtype ({', '.join(_FLOAT_DTYPES)})"
            )
    if "impl" in options and options["impl"] not in impl_names():
        *names, last = [repr(name) for name in impl_names()]
        raise bad("impl", options["impl"], f"{', '.join(names)} or {last}")
    for option in ("dropout", "drop_path_rate"):
        rate = options.get(option, 0.0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise bad(option, rate, "a probability in [0, 1)")
