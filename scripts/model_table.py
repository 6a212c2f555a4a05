"""Print the README's model table: parameters, torchvision's top-1, measured parity bound
(against torchvision, or timm for timm's names).

RESNET_FLAX_PARITY_REPORT=/tmp/parity.json pytest tests/test_parity.py
python scripts/model_table.py /tmp/parity.json
"""

from __future__ import annotations

import json
import sys

import resnet_flax
from resnet_flax.io.weights import weights_for
from resnet_flax.models.registry import TIMM_MODELS, count_parameters


def main(report_path: str | None) -> None:
    report = {}
    if report_path:
        with open(report_path) as f:
            report = json.load(f)
    print("| model | parameters | torchvision top-1 (V1 / V2) | parity: worst relative error |")
    print("|---|---:|---|---:|")
    for name in resnet_flax.list_models():
        params = count_parameters(resnet_flax.create_model(name))
        top1 = " / ".join(f"{w.top1:.3f}" for w in weights_for(name) if w.top1 is not None)
        worst = max(report[name].values()) if name in report else None
        if worst is not None:
            parity = f"{worst:.1e}"
        else:
            measured = (*resnet_flax.TORCHVISION_MODELS, *TIMM_MODELS)
            parity = "not measured" if name in measured else "- (ours)"
        print(f"| `{name}` | {params:,} | {top1 or '-'} | {parity} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
