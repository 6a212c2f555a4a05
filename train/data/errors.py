"""The one error type the data package raises for bad input, and helpers that build it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from resnet_flax.io import paths
from resnet_flax.models.checks import did_you_mean

T = TypeVar("T")


class DataError(ValueError):
    """Bad data-set input: an unknown name or split, a missing or empty folder, no data files."""


def unknown_choice(kind: str, value: str, valid: Iterable[str], fix: str = "") -> DataError:
    """An error for `value` not among `valid`, suggesting close matches and listing all."""
    valid = sorted(valid)
    listing = ", ".join(repr(v) for v in valid) if valid else "(none)"
    return DataError(
        f"Unknown {kind} {value!r}.{did_you_mean(value, valid)} Valid: {listing}."
        f"{' ' + fix if fix else ''}"
    )


def require_dir(path: str | None, what: str, fix: str) -> str:
    """Return `path` (local or a URL, ``file://`` dropped) if it is an existing directory,
    else raise a DataError naming it."""
    if path is None:
        raise DataError(f"{what} needs a data_dir. {fix}")
    found = paths.as_path(path)
    if not found.is_dir():
        state = "is not a directory" if found.exists() else "does not exist"
        raise DataError(f"{what}: {path} {state}. {fix}")
    return str(found)


def decoded(decode: Callable[..., T], source: str, *args: Any, **kwargs: Any) -> T:
    """``decode(*args, **kwargs)``; an image it cannot decode becomes a DataError naming
    ``source`` (what PIL and OpenCV raise for a bad file: OSError, SyntaxError, ValueError)."""
    try:
        return decode(*args, **kwargs)
    except (OSError, SyntaxError, ValueError) as error:
        reason = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))  # PIL's
        raise DataError(f"Cannot decode {source}: {reason}. Remove or replace the file.") from error
