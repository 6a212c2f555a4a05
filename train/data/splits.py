"""Split names with an optional TFDS-style slice: `train`, `train[:45000]`, `train[90%:]`."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import DataError, unknown_choice

_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\])?$")


def parse_split(split: str) -> tuple[str, slice | None]:
    """Split `split` into its name and the slice it asks for (None for the whole split)."""
    match = _SPLIT.match(split.strip())
    if match is None:
        raise DataError(
            f"Cannot read split {split!r}: write a name such as 'train', optionally sliced "
            "like 'train[:45000]', 'train[45000:]' or 'train[:90%]'."
        )
    if match["start"] is None:
        return match["name"], None
    return match["name"], slice(match["start"] or None, match["stop"] or None)


def check_split(name: str, valid: Iterable[str], where: str) -> str:
    """Return `name` if it is among `valid`, else a DataError listing the splits of `where`."""
    valid = list(valid)
    if name not in valid:
        raise unknown_choice("split", name, valid, fix=f"({where})")
    return name


def resolve_slice(bounds: slice | None, n: int) -> slice:
    """Turn a parsed slice (bounds may be ints or percentages as text) into index bounds."""
    if bounds is None:
        return slice(0, n)

    def index(bound: str | None, default: int) -> int:
        if bound is None:
            return default
        if bound.endswith("%"):
            return round(int(bound[:-1]) * n / 100)
        return int(bound)

    start, stop, _ = slice(index(bounds.start, 0), index(bounds.stop, n)).indices(n)
    if stop <= start:
        raise DataError(f"Slice [{bounds.start}:{bounds.stop}] of a {n}-example split is empty.")
    return slice(start, stop)
