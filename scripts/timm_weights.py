"""Print resnet_flax/io/weights.py's TIMM_WEIGHTS table from timm's pretrained configs
(fields at their defaults left out).

python scripts/timm_weights.py   # needs timm; paste the output over the table
"""

from __future__ import annotations

import dataclasses

import timm
from timm.models import get_pretrained_cfg

import resnet_flax
from resnet_flax.io.weights import TimmWeights


def main() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(TimmWeights)}
    print("TIMM_WEIGHTS: tuple[TimmWeights, ...] = (")
    for name in resnet_flax.TIMM_MODELS:
        for tag in timm.list_pretrained(name + ".*"):
            if tag.split(".")[0] != name:
                continue
            c = get_pretrained_cfg(tag)
            values = {
                "test_size": c.test_input_size[-1] if c.test_input_size else None,
                "test_crop_pct": c.test_crop_pct,
                "interpolation": c.interpolation,
                "mean": tuple(c.mean),
                "std": tuple(c.std),
                "num_classes": c.num_classes,
            }
            extra = "".join(f", {k}={v!r}" for k, v in values.items() if v != defaults[k])
            print(f"    TimmWeights({tag!r}, {c.input_size[-1]}, {c.crop_pct}{extra}),")
    print(")")


if __name__ == "__main__":
    main()
