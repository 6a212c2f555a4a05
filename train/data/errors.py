"""The one error type the data package raises for bad input, and helpers that build it."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class DataError(ValueError):
    """Bad data-set input: an unknown name or split, a missing or empty folder, no data files."""


def unknown_choice(kind: str, value: str, valid: Iterable[str], fix: str = "") -> DataError:
    """An error for `value` not among `valid`, suggesting close matches and listing all."""
    valid = sorted(valid)
    close = difflib.get_close_matches(value, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(repr(v) for v in valid) if valid else "(none)"
    return DataError(f"Unknown {kind} {value!r}.{hint} Valid: {listing}.{' ' + fix if fix else ''}")


def require_dir(path: str | None, what: str, fix: str) -> str:
    """Return `path` if it is an existing directory, else raise a DataError naming it."""
    if path is None:
        raise DataError(f"{what} needs a data_dir. {fix}")
    if not os.path.isdir(path):
        state = "is not a directory" if os.path.exists(path) else "does not exist"
        raise DataError(f"{what}: {path} {state}. {fix}")
    return path
