"""Print resnet_flax/io/weights.py's TIMM_WEIGHTS table from timm's pretrained configs.

python scripts/timm_weights.py   # needs timm; paste the output over the table
"""

from __future__ import annotations

import timm
from timm.models import get_pretrained_cfg

import resnet_flax


def main() -> None:
    print("TIMM_WEIGHTS: tuple[TimmWeights, ...] = (")
    for name in resnet_flax.TIMM_MODELS:
        for tag in timm.list_pretrained(name + ".*"):
            if tag.split(".")[0] != name:
                continue
            c = get_pretrained_cfg(tag)
            test = c.test_input_size[-1] if c.test_input_size else None
            print(
                f"    TimmWeights({tag!r}, {c.input_size[-1]}, {c.crop_pct}, {c.interpolation!r}, "
                f"{tuple(c.mean)}, {tuple(c.std)}, {test}, {c.test_crop_pct}, {c.num_classes}),"
            )
    print(")")


if __name__ == "__main__":
    main()
