"""Labels by class name: every split of a run labels its examples with indices into the
training split's class list, whatever classes the split itself has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DataError


def label_map(names: Sequence[str], reference: Sequence[str], where: str) -> np.ndarray:
    """``map[i]``: the index in ``reference`` of the class ``names[i]``.

    A split may hold a subset of the training classes; a class the training split lacks has
    no label the model could predict, so it is a DataError naming the classes.
    """
    position = {name: index for index, name in enumerate(reference)}
    unknown = [name for name in names if name not in position]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{where} has {len(unknown)} class(es) the training split lacks: {shown}. Labels "
            f"are indices into the training split's {len(reference)} classes, by name: remove "
            f"those classes from {where}, or add them to the training split."
        )
    return np.array([position[name] for name in names], dtype=np.int32)


def is_identity(names: Sequence[str], reference: Sequence[str]) -> bool:
    return list(names) == list(reference)


class Relabelled:
    """A random-access source whose labels are mapped into ``reference``'s indices."""

    def __init__(self, source: Any, reference: Sequence[str], where: str) -> None:
        self._source = source
        self._map = label_map(source.class_names, reference, where)
        self.class_names = list(reference)
        self.num_classes = len(reference)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[index]
        return record | {"label": int(self._map[record["label"]])}
