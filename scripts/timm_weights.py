"""Write resnet_flax/io/timm_weights.csv, the table of timm's weights for the models we build,
from timm's pretrained configs, with top-1/top-5 from timm's own results table.

python scripts/timm_weights.py [results-imagenet.csv] > resnet_flax/io/timm_weights.csv

Needs timm. The results table is timm's ``results/results-imagenet.csv``
(github.com/huggingface/pytorch-image-models), whose accuracies are at each entry's test size.
A field at its default (``TimmWeights``'s) is left empty.
"""

from __future__ import annotations

import csv
import dataclasses
import sys

import timm
from timm.models import get_pretrained_cfg

import resnet_flax
from resnet_flax.io.weights import TimmWeights


def main(results_path: str | None) -> None:
    results = {}
    if results_path:
        with open(results_path, newline="") as f:
            results = {row["model"]: row for row in csv.DictReader(f)}
    fields = dataclasses.fields(TimmWeights)
    out = csv.DictWriter(sys.stdout, [f.name for f in fields], lineterminator="\n")
    out.writeheader()
    # timm's weights for torchvision's architectures too (resnet50.a1_in1k), but not timm's
    # copies of torchvision's own (resnet50.tv_in1k: hub.py fetches those from torchvision)
    for name in (*resnet_flax.TORCHVISION_MODELS, *resnet_flax.TIMM_MODELS):
        for tag in timm.list_pretrained(name + ".*"):
            if tag.split(".")[0] != name or tag.split(".")[1] in ("tv_in1k", "tv2_in1k"):
                continue
            c = get_pretrained_cfg(tag)
            if not c.num_classes:  # a backbone without a classifier (resnet50.bamboo)
                continue
            values = {
                "tag": tag,
                "image_size": c.input_size[-1],
                "crop_pct": c.crop_pct,
                "test_size": c.test_input_size[-1] if c.test_input_size else None,
                "test_crop_pct": c.test_crop_pct,
                "interpolation": c.interpolation,
                "mean": tuple(c.mean),
                "std": tuple(c.std),
                "num_classes": c.num_classes,
            }
            if tag in results:
                row = results[tag]
                size = values["test_size"] or values["image_size"]
                if int(row["img_size"]) != size:
                    sys.exit(f"{tag}: timm's results are at {row['img_size']} px, not {size}")
                values |= {"top1": float(row["top1"]), "top5": float(row["top5"])}
            out.writerow(
                {
                    f.name: ""
                    if values.get(f.name, f.default) == f.default
                    else _text(values[f.name])
                    for f in fields
                }
            )


def _text(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
