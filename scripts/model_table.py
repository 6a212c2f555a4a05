"""Print the README's model table: parameters, torchvision's top-1, timm's best published
top-1, measured parity bound (against torchvision, or timm for timm's names).

RESNET_FLAX_PARITY_REPORT=/tmp/parity.json pytest tests/test_parity.py
python scripts/model_table.py /tmp/parity.json
"""

from __future__ import annotations

import json
import sys

import resnet_flax
from resnet_flax.io.weights import TIMM_WEIGHTS, weights_for
from resnet_flax.models.registry import TIMM_MODELS, count_parameters


def main(report_path: str | None) -> None:
    report = {}
    if report_path:
        with open(report_path) as f:
            report = json.load(f)
    print(
        "| model | parameters | torchvision top-1 (V1 / V2) | timm's best top-1 (weights, size) "
        "| parity: worst relative error |"
    )
    print("|---|---:|---|---|---:|")
    for name in resnet_flax.list_models():
        params = count_parameters(resnet_flax.create_model(name))
        top1 = " / ".join(f"{w.top1:.3f}" for w in weights_for(name) if w.top1 is not None)
        timm = [w for w in TIMM_WEIGHTS if w.model == name and w.top1 is not None]
        best = max(timm, key=lambda w: w.top1, default=None)
        timm_top1 = "-"
        if best is not None:
            size = best.test_size or best.image_size
            timm_top1 = f"{best.top1:.3f} (`{best.tag.split('.', 1)[1]}`, {size})"
        worst = max(report[name].values()) if name in report else None
        if worst is not None:
            parity = f"{worst:.1e}"
        else:
            measured = (*resnet_flax.TORCHVISION_MODELS, *TIMM_MODELS)
            parity = "not measured" if name in measured else "- (ours)"
        print(f"| `{name}` | {params:,} | {top1 or '-'} | {timm_top1} | {parity} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
