"""Every published weights entry for the models we build, torchvision's and timm's alike, as
one table of one record type: :class:`Weights`, read from the data file ``weights.csv``.

The file is written by ``scripts/weights_table.py`` from torchvision's ``Weights`` enums and
timm's pretrained configs (with top-1/top-5 from timm's results table), so a weights file can
be recognised by its name without importing torch (``identify("resnet50-11ad3fa6.pth")`` is
ResNet-50's V2), and every entry carries the evaluation transform it was published with
(``transforms()``, as torchvision's ``weights.transforms()``).

A tag is ``MODEL.SUFFIX``, timm's spelling, for both sources: torchvision's ``IMAGENET1K_V1``
and ``IMAGENET1K_V2`` are ``MODEL.tv_in1k`` and ``MODEL.tv2_in1k`` (``enum`` keeps
torchvision's name); ``resnet50.a1_in1k`` is timm's.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from resnet_flax.io.transforms import EvalTransform, Triple

TORCHVISION_URL = "https://download.pytorch.org/models/"
BASE_URL_ENV = "RESNET_FLAX_WEIGHTS_URL"  # a mirror of torchvision's server (and the tests')
HUGGING_FACE = "https://huggingface.co"

Source = Literal["torchvision", "timm"]


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published weights entry and its evaluation transform.

    - ``tag``: ``MODEL.SUFFIX`` (``resnet50.tv2_in1k``, ``resnet50.a1_in1k``).
    - ``source``: ``"torchvision"`` (fetched from torchvision's server into torch hub's
      cache) or ``"timm"`` (from the Hugging Face hub's ``timm/TAG`` repository).
    - ``file``: the file's name there (torchvision's names end in their sha256's prefix).
    - ``enum``: torchvision's enum name (``IMAGENET1K_V2``); ``None`` for timm's.
    - ``resize_size``, ``crop_size``, ``interpolation``, ``mean``, ``std``: the evaluation
      transform (resize the shorter side, centre crop; timm's resize is ``floor(crop_size /
      crop_pct)``); ``test_resize_size``/``test_crop_size``: timm's larger test size, if any.
    - ``num_classes``; ``num_params`` (torchvision's count, ``None`` for timm's).
    - ``top1``/``top5``: ImageNet-1k validation accuracy in percent, the publisher's own (timm's
      at the test size where it has one); ``None`` where none is published.
    - ``features_only``: the classifier is not trained (torchvision's ``vgg16`` features).
    """

    tag: str
    source: Source
    file: str
    enum: str | None
    resize_size: int
    crop_size: int
    test_resize_size: int | None
    test_crop_size: int | None
    interpolation: str
    mean: Triple
    std: Triple
    num_classes: int
    num_params: int | None
    top1: float | None
    top5: float | None
    features_only: bool

    @property
    def model(self) -> str:
        """The registry name these weights are for."""
        return self.tag.split(".", 1)[0]

    @property
    def suffix(self) -> str:
        """The tag's part after the model name: ``tv2_in1k``, ``a1_in1k``."""
        return self.tag.split(".", 1)[1]

    @property
    def url(self) -> str:
        """Where the file is downloaded from: torchvision's server (or the mirror that
        ``RESNET_FLAX_WEIGHTS_URL`` names), or the Hugging Face hub (``HF_ENDPOINT``)."""
        if self.source == "torchvision":
            base = os.environ.get(BASE_URL_ENV) or TORCHVISION_URL
            if not base.startswith(("http://", "https://", "file:")):
                raise ValueError(
                    f"{BASE_URL_ENV}={base!r} is not a URL: set it to a mirror's address, such "
                    f"as {TORCHVISION_URL}, or unset it."
                )
            return f"{base.rstrip('/')}/{self.file}"
        base = os.environ.get("HF_ENDPOINT") or HUGGING_FACE
        return f"{base.rstrip('/')}/{self.repository}/resolve/main/{self.file}"

    @property
    def repository(self) -> str:
        """timm's Hugging Face repository, ``timm/TAG`` (timm's entries only)."""
        return f"timm/{self.tag}"

    def transforms(self, test: bool = False) -> EvalTransform:
        """The evaluation transform these weights were published with (torchvision's
        ``weights.transforms()``; timm's ``resolve_data_config``): call it on images to get
        the model's input batch. ``test``: at timm's larger test size, where it has one."""
        resize, crop = self.resize_size, self.crop_size
        if test and self.test_crop_size:
            resize, crop = self.test_resize_size, self.test_crop_size
        return EvalTransform(resize, crop, self.interpolation, self.mean, self.std)


def timm_resize(crop_size: int, crop_pct: float) -> int:
    """timm's resize for a centre crop of ``crop_pct``: ``floor(crop_size / crop_pct)``."""
    return math.floor(crop_size / crop_pct)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: parse(text) if text else None


def _triple(text: str) -> Triple:
    a, b, c = (float(v) for v in text.split())
    return a, b, c


# How each column of weights.csv is read: one parser per field, by name.
_PARSE: dict[str, Callable[[str], Any]] = {
    "tag": str,
    "source": str,
    "file": str,
    "enum": _optional(str),
    "resize_size": int,
    "crop_size": int,
    "test_resize_size": _optional(int),
    "test_crop_size": _optional(int),
    "interpolation": str,
    "mean": _triple,
    "std": _triple,
    "num_classes": int,
    "num_params": _optional(int),
    "top1": _optional(float),
    "top5": _optional(float),
    "features_only": lambda text: {"true": True, "false": False}[text],
}
FIELDS = tuple(_PARSE)
assert tuple(f.name for f in dataclasses.fields(Weights)) == FIELDS


def to_row(entry: Weights) -> dict[str, str]:
    """``entry`` as a row of ``weights.csv`` (what ``scripts/weights_table.py`` writes)."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return " ".join(map(str, value))
        return str(value)

    return {name: text(getattr(entry, name)) for name in FIELDS}


def _read() -> tuple[Weights, ...]:
    text = resources.files("resnet_flax.io").joinpath("weights.csv").read_text("utf-8")
    rows = csv.DictReader(io.StringIO(text))
    if tuple(rows.fieldnames or ()) != FIELDS:
        raise ValueError(f"weights.csv has columns {rows.fieldnames}, expected {FIELDS}")
    return tuple(Weights(**{k: _PARSE[k](v) for k, v in row.items()}) for row in rows)


WEIGHTS: tuple[Weights, ...] = _read()
_BY_TAG = {w.tag: w for w in WEIGHTS}
_BY_FILE = {w.file: w for w in WEIGHTS if w.source == "torchvision"}

# The registry names whose architecture is torchvision's own (those torchvision publishes
# weights for), in the table's order.
TORCHVISION_MODELS: tuple[str, ...] = tuple(
    dict.fromkeys(w.model for w in WEIGHTS if w.source == "torchvision")
)


def by_tag(tag: str) -> Weights | None:
    """The entry of ``tag``, or ``None``."""
    return _BY_TAG.get(tag)


def weights_for(model: str) -> list[Weights]:
    """The published weights of ``model``, torchvision's (oldest first) then timm's; may be
    empty."""
    return [w for w in WEIGHTS if w.model == model]


def identify(path_or_filename: str | os.PathLike) -> Weights | None:
    """The torchvision entry whose file name is that of ``path_or_filename``, else ``None``."""
    return _BY_FILE.get(os.path.basename(os.fspath(path_or_filename)))
