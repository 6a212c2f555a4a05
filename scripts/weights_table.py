"""Write resnet_flax/io/weights.csv, the table of every published weights entry for the models
we build: torchvision's (from its ``Weights`` enums) and timm's (from its pretrained configs,
with top-1/top-5 from timm's own results table).

python scripts/weights_table.py [results-imagenet.csv] > resnet_flax/io/weights.csv

Needs torchvision and timm. The results table is timm's ``results/results-imagenet.csv``
(github.com/huggingface/pytorch-image-models), whose accuracies are at each entry's test size.
timm's copies of torchvision's own files (``resnet50.tv_in1k``) are torchvision's entries, and
backbones without a classifier are left out.
"""

from __future__ import annotations

import csv
import math
import sys

import timm
import torchvision.models
from timm.models import get_pretrained_cfg

from resnet_flax.io.weights import FIELDS, Weights, timm_resize, to_row
from resnet_flax.models.registry import TIMM_MODELS, list_models

# torchvision's enum names as timm's tag suffixes
SUFFIXES = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k",
            "IMAGENET1K_FEATURES": "tv_features"}  # fmt: skip


def torchvision_entries(name: str) -> list[Weights]:
    entries = []
    for e in torchvision.models.get_model_weights(name):
        t, meta = e.transforms(), e.meta
        metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
        # torchvision writes NaN where it publishes no accuracy (the features-only weights)
        metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
        entries.append(
            Weights(
                tag=f"{name}.{SUFFIXES[e.name]}",
                source="torchvision",
                file=e.url.rsplit("/", 1)[1],
                enum=e.name,
                resize_size=t.resize_size[0],
                crop_size=t.crop_size[0],
                test_resize_size=None,
                test_crop_size=None,
                interpolation=t.interpolation.value,
                mean=tuple(t.mean),
                std=tuple(t.std),
                num_classes=1000,
                num_params=meta["num_params"],
                top1=metrics.get("acc@1"),
                top5=metrics.get("acc@5"),
                features_only=meta["categories"] is None,
            )
        )
    return entries


def timm_entries(name: str, results: dict[str, dict[str, str]]) -> list[Weights]:
    entries = []
    for tag in timm.list_pretrained(name + ".*"):
        if tag.split(".")[0] != name or tag.split(".")[1] in ("tv_in1k", "tv2_in1k"):
            continue
        c = get_pretrained_cfg(tag)
        if not c.num_classes:  # a backbone without a classifier (resnet50.bamboo)
            continue
        size = c.input_size[-1]
        test = c.test_input_size[-1] if c.test_input_size else None
        top1 = top5 = None
        if (row := results.get((tag, test or size))) is not None:  # timm's, at the test size
            top1, top5 = float(row["top1"]), float(row["top5"])
        entries.append(
            Weights(
                tag=tag,
                source="timm",
                file="model.safetensors",
                enum=None,
                resize_size=timm_resize(size, c.crop_pct),
                crop_size=size,
                test_resize_size=timm_resize(test, c.test_crop_pct or c.crop_pct) if test else None,
                test_crop_size=test,
                interpolation=c.interpolation,
                mean=tuple(c.mean),
                std=tuple(c.std),
                num_classes=c.num_classes,
                num_params=None,
                top1=top1,
                top5=top5,
                features_only=False,
            )
        )
    return entries


def main(results_path: str | None) -> None:
    results = {}
    if results_path:
        with open(results_path, newline="") as f:
            # a tag may have rows at several sizes (its train and its test size)
            results = {(row["model"], int(row["img_size"])): row for row in csv.DictReader(f)}
    out = csv.DictWriter(sys.stdout, FIELDS, lineterminator="\n")
    out.writeheader()
    # the registry's names whose architecture is torchvision's own
    ours = set(torchvision.models.list_models())
    torchvisions = [name for name in list_models() if name in ours]
    entries = [e for name in torchvisions for e in torchvision_entries(name)]
    # timm's weights for torchvision's architectures too (resnet50.a1_in1k), then its own
    names = (*torchvisions, *TIMM_MODELS)
    entries += [e for name in names for e in timm_entries(name, results)]
    for entry in entries:
        out.writerow(to_row(entry))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
