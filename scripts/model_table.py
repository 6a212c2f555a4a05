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
from resnet_flax.io.hub import tag_of
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
    print()
    print("| model | weights: tag suffix (top-1) |")
    print("|---|---|")
    for name in resnet_flax.list_models():
        entries = [(tag_of(w), w.top1) for w in weights_for(name)] + [
            (w.tag, w.top1) for w in TIMM_WEIGHTS if w.model == name
        ]
        if entries:
            cells = [
                f"`{tag.split('.', 1)[1]}`" + (f" ({top1:.1f})" if top1 is not None else "")
                for tag, top1 in entries
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
