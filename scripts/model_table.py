"""Print the README's model table (parameters, torchvision's top-1, timm's best published
top-1, measured parity bound against torchvision, or timm for timm's names), then its weights
table (every tag, by model, with its top-1).

RESNET_FLAX_PARITY_REPORT=/tmp/parity.json pytest tests/test_parity.py
python scripts/model_table.py /tmp/parity.json            # print both
python scripts/model_table.py /tmp/parity.json --readme   # or write them into README.md
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import resnet_flax
from resnet_flax.io.weights import weights_for
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
        entries = weights_for(name)
        torchvision = [w for w in entries if w.source == "torchvision" and w.top1 is not None]
        top1 = " / ".join(f"{w.top1:.3f}" for w in torchvision)
        timm = [w for w in entries if w.source == "timm" and w.top1 is not None]
        best = max(timm, key=lambda w: w.top1, default=None)
        timm_top1 = "-"
        if best is not None:
            size = best.test_crop_size or best.crop_size
            timm_top1 = f"{best.top1:.3f} (`{best.suffix}`, {size})"
        worst = max(report[name].values()) if name in report else None
        if worst is not None:
            parity = f"{worst:.1e}"
        else:
            measured = (*resnet_flax.TORCHVISION_MODELS, *TIMM_MODELS)
            parity = "not measured" if name in measured else "- (ours)"
        print(f"| `{name}` | {params:,} | {top1 or '-'} | {timm_top1} | {parity} |")
    print()
    print("| model | weights: tag suffix (top-1) |")
    print("|---|---|")
    for name in resnet_flax.list_models():
        entries = weights_for(name)
        if entries:
            cells = [
                f"`{w.suffix}`" + (f" ({w.top1:.1f})" if w.top1 is not None else "")
                for w in entries
            ]
            print(f"| `{name}` | {', '.join(cells)} |")


def write_readme(report_path: str | None) -> None:
    """Replace the tables between README.md's ``<!-- model-table -->`` and
    ``<!-- weights-table -->`` markers."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(report_path)
    readme = Path(__file__).parent.parent / "README.md"
    text = readme.read_text()
    tables = out.getvalue().strip().split("\n\n")
    for marker, table in zip(("model-table", "weights-table"), tables, strict=True):
        block = f"<!-- {marker} -->\n{table}\n<!-- /{marker} -->"
        pattern = rf"<!-- {marker} -->\n.*?<!-- /{marker} -->"
        text = re.sub(pattern, block.replace("\\", "\\\\"), text, flags=re.S)
    readme.write_text(text)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--readme"]
    (write_readme if "--readme" in sys.argv else main)(args[0] if args else None)
