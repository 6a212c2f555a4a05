"""torchvision's published ImageNet weights for every torchvision model, and timm's for its
ResNets, as tables.

Generated once from torchvision 0.29's ``Weights`` enums (``ResNet50_Weights.IMAGENET1K_V2``
...), so that a weights file can be recognised by its name without importing torch:
``identify("resnet50-11ad3fa6.pth")`` is ResNet-50 V2, and its ``transforms()`` is the
evaluation transform it was published with (resize 232, crop 224).

The table also names the models whose architecture is torchvision's own
(:data:`TORCHVISION_MODELS`): those that weights import into and parity tests cover.
:data:`TIMM_WEIGHTS` holds timm's weights of the timm names we build (generated from timm's
pretrained configs by ``scripts/timm_weights.py``): each on the Hugging Face hub as
``timm/TAG``, with the evaluation transform timm resolves for it (``resolve_data_config``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from importlib import resources

from resnet_flax.io.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

URL_BASE = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """One torchvision weights entry and the evaluation transforms it was published with.

    ``top1``/``top5`` are torchvision's ImageNet-1k validation accuracies (percent; ``None``
    where it publishes none). ``features_only`` marks weights whose classifier is not trained
    (torchvision sets it to NaN): use them for feature extraction only.
    """

    model: str
    tag: str
    file_name: str
    resize_size: int
    crop_size: int
    top1: float | None
    top5: float | None
    num_params: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    features_only: bool = False

    @property
    def url(self) -> str:
        """The download address torchvision uses."""
        return URL_BASE + self.file_name

    def transforms(self) -> EvalTransform:
        """The evaluation transform these weights were published with (torchvision's
        ``weights.transforms()``): call it on images to get the model's input batch."""
        return EvalTransform(
            self.resize_size, self.crop_size, self.interpolation, self.mean, self.std
        )


# model, tag, file name, resize, crop, top-1, top-5, parameters[, non-default transforms]
WEIGHTS: tuple[WeightsInfo, ...] = (
    WeightsInfo(
        "resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 256, 224, 69.758, 89.078, 11689512
    ),
    WeightsInfo(
        "resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", 256, 224, 73.314, 91.42, 21797672
    ),
    WeightsInfo(
        "resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 256, 224, 76.13, 92.862, 25557032
    ),
    WeightsInfo(
        "resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 232, 224, 80.858, 95.434, 25557032
    ),
    WeightsInfo(
        "resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 256, 224, 77.374, 93.546, 44549160
    ),
    WeightsInfo(
        "resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 232, 224, 81.886, 95.78, 44549160
    ),
    WeightsInfo(
        "resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 256, 224, 78.312, 94.046, 60192808
    ),
    WeightsInfo(
        "resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 232, 224, 82.284, 96.002, 60192808
    ),
    WeightsInfo(
        "resnext50_32x4d",
        "IMAGENET1K_V1",
        "resnext50_32x4d-7cdf4587.pth",
        256,
        224,
        77.618,
        93.698,
        25028904,
    ),
    WeightsInfo(
        "resnext50_32x4d",
        "IMAGENET1K_V2",
        "resnext50_32x4d-1a0047aa.pth",
        232,
        224,
        81.198,
        95.34,
        25028904,
    ),
    WeightsInfo(
        "resnext101_32x8d",
        "IMAGENET1K_V1",
        "resnext101_32x8d-8ba56ff5.pth",
        256,
        224,
        79.312,
        94.526,
        88791336,
    ),
    WeightsInfo(
        "resnext101_32x8d",
        "IMAGENET1K_V2",
        "resnext101_32x8d-110c445d.pth",
        232,
        224,
        82.834,
        96.228,
        88791336,
    ),
    WeightsInfo(
        "resnext101_64x4d",
        "IMAGENET1K_V1",
        "resnext101_64x4d-173b62eb.pth",
        232,
        224,
        83.246,
        96.454,
        83455272,
    ),
    WeightsInfo(
        "wide_resnet50_2",
        "IMAGENET1K_V1",
        "wide_resnet50_2-95faca4d.pth",
        256,
        224,
        78.468,
        94.086,
        68883240,
    ),
    WeightsInfo(
        "wide_resnet50_2",
        "IMAGENET1K_V2",
        "wide_resnet50_2-9ba9bcbe.pth",
        232,
        224,
        81.602,
        95.758,
        68883240,
    ),
    WeightsInfo(
        "wide_resnet101_2",
        "IMAGENET1K_V1",
        "wide_resnet101_2-32ee1156.pth",
        256,
        224,
        78.848,
        94.284,
        126886696,
    ),
    WeightsInfo(
        "wide_resnet101_2",
        "IMAGENET1K_V2",
        "wide_resnet101_2-d733dc28.pth",
        232,
        224,
        82.51,
        96.02,
        126886696,
    ),
    WeightsInfo("vgg11", "IMAGENET1K_V1", "vgg11-8a719046.pth", 256, 224, 69.02, 88.628, 132863336),
    WeightsInfo(
        "vgg11_bn", "IMAGENET1K_V1", "vgg11_bn-6002323d.pth", 256, 224, 70.37, 89.81, 132868840
    ),
    WeightsInfo(
        "vgg13", "IMAGENET1K_V1", "vgg13-19584684.pth", 256, 224, 69.928, 89.246, 133047848
    ),
    WeightsInfo(
        "vgg13_bn", "IMAGENET1K_V1", "vgg13_bn-abd245e5.pth", 256, 224, 71.586, 90.374, 133053736
    ),
    WeightsInfo(
        "vgg16", "IMAGENET1K_V1", "vgg16-397923af.pth", 256, 224, 71.592, 90.382, 138357544
    ),
    WeightsInfo(
        "vgg16",
        "IMAGENET1K_FEATURES",
        "vgg16_features-amdegroot-88682ab5.pth",
        256,
        224,
        None,
        None,
        138357544,
        mean=(0.48235, 0.45882, 0.40784),
        std=(0.00392156862745098, 0.00392156862745098, 0.00392156862745098),
        features_only=True,
    ),
    WeightsInfo(
        "vgg16_bn", "IMAGENET1K_V1", "vgg16_bn-6c64b313.pth", 256, 224, 73.36, 91.516, 138365992
    ),
    WeightsInfo(
        "vgg19", "IMAGENET1K_V1", "vgg19-dcbb9e9d.pth", 256, 224, 72.376, 90.876, 143667240
    ),
    WeightsInfo(
        "vgg19_bn", "IMAGENET1K_V1", "vgg19_bn-c79401a0.pth", 256, 224, 74.218, 91.842, 143678248
    ),
)

_BY_FILE_NAME = {w.file_name: w for w in WEIGHTS}

# The registry names whose architecture is torchvision's own, in the table's order.
TORCHVISION_MODELS: tuple[str, ...] = tuple(dict.fromkeys(w.model for w in WEIGHTS))


def weights_for(model: str) -> list[WeightsInfo]:
    """The published weights of ``model`` (a torchvision name), oldest first; may be empty."""
    return [w for w in WEIGHTS if w.model == model]


def identify(path_or_filename: str | os.PathLike) -> WeightsInfo | None:
    """The weights entry whose file name is that of ``path_or_filename``, else ``None``."""
    return _BY_FILE_NAME.get(os.path.basename(os.fspath(path_or_filename)))


@dataclasses.dataclass(frozen=True)
class TimmWeights:
    """One timm weights entry (``resnet50d.a1_in1k``) and its evaluation settings, as timm's
    ``resolve_data_config`` gives them: input ``image_size``, ``crop_pct`` (the image is resized
    to ``floor(image_size / crop_pct)``, then centre-cropped), interpolation, mean and std, and
    the larger ``test_size`` (with ``test_crop_pct``) timm reports its best accuracy at.

    ``top1``/``top5`` are timm's ImageNet-1k validation accuracies (percent, from its
    ``results-imagenet.csv``) at ``test_size`` where there is one, else at ``image_size``;
    ``None`` where timm lists none (ImageNet-21k heads, the newest entries)."""

    tag: str
    image_size: int
    crop_pct: float
    test_size: int | None = None
    test_crop_pct: float | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    top1: float | None = None
    top5: float | None = None
    features_only: bool = False  # as WeightsInfo: every timm entry has its classifier

    @property
    def model(self) -> str:
        return self.tag.split(".")[0]

    @property
    def hf_hub_id(self) -> str:
        return f"timm/{self.tag}"

    def transforms(self, test: bool = False) -> EvalTransform:
        """timm's ``create_transform(**resolve_data_config(...))`` for evaluation: at the
        training size, or with ``test`` at ``test_size``."""
        size, crop_pct = self.image_size, self.crop_pct
        if test and self.test_size:
            size, crop_pct = self.test_size, self.test_crop_pct or self.crop_pct
        return EvalTransform(
            math.floor(size / crop_pct), size, self.interpolation, self.mean, self.std
        )


def _read_timm_weights() -> tuple[TimmWeights, ...]:
    """The rows of ``timm_weights.csv`` (written by ``scripts/timm_weights.py``; an empty field
    is the field's default)."""
    text = resources.files("resnet_flax.io").joinpath("timm_weights.csv").read_text("utf-8")
    kinds = {f.name: f.type for f in dataclasses.fields(TimmWeights)}

    def parse(name: str, text: str) -> object:
        kind = kinds[name]
        if "tuple" in kind:
            return tuple(float(v) for v in text.split())
        return int(text) if "int" in kind else float(text) if "float" in kind else text

    rows = csv.DictReader(io.StringIO(text))
    return tuple(TimmWeights(**{k: parse(k, v) for k, v in row.items() if v}) for row in rows)


TIMM_WEIGHTS: tuple[TimmWeights, ...] = _read_timm_weights()
