"""The docs' generated parts: each a function of the data files the project's commands write.

``docs/hooks.py`` replaces every ``<!-- generated: NAME -->`` line of a page with ``NAME``'s
output when mkdocs builds the site, so a page shows what the file holds, never a copy typed by
hand. Each table ends with the machine, the date and the command that made its figures.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARITY = ROOT / "docs" / "data" / "parity.json"
RUNS = ROOT / "docs" / "data" / "runs.json"
BENCH = ROOT / "bench" / "results.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _provenance(info: dict, path: Path) -> str:
    from bench.provenance import describe

    if "date" not in info:  # written before the date was recorded: the commit that added it
        date = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", str(path)],
            cwd=ROOT, capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        info = info | {"date": f"{date} (commit date)" if date else "date not recorded"}
    return f"*{describe(info)}*"


def model_table() -> str:
    """Every name: parameters, torchvision's and timm's best top-1, and the parity measured."""
    import resnet_flax
    from resnet_flax.io.weights import weights_for
    from resnet_flax.models.registry import TIMM_MODELS, count_parameters

    report = _load(PARITY)
    meta = report.pop("_meta", {})
    measured = (*resnet_flax.TORCHVISION_MODELS, *TIMM_MODELS)
    lines = [
        "| model | parameters | torchvision top-1 (V1 / V2) | timm's best top-1 (weights, size) "
        "| parity: worst relative error |",
        "|---|---:|---|---|---:|",
    ]
    for name in resnet_flax.list_models():
        entries = weights_for(name)
        tv = " / ".join(
            f"{w.top1:.3f}" for w in entries if w.source == "torchvision" and w.top1 is not None
        )
        timm = [w for w in entries if w.source == "timm" and w.top1 is not None]
        best = max(timm, key=lambda w: w.top1, default=None)
        best_cell = "-"
        if best is not None:
            best_cell = (
                f"{best.top1:.3f} (`{best.suffix}`, {best.test_crop_size or best.crop_size})"
            )
        measured_here = dict(report.get(name, {}))
        params = measured_here.pop("parameters", None)  # the reference's own count
        if measured_here:
            parity = f"{max(measured_here.values()):.1e}"
        else:
            parity = "not measured" if name in measured else "- (ours)"
        if params is None:  # ours, or not in the report: counted from the model
            params = count_parameters(resnet_flax.create_model(name))
        lines.append(f"| `{name}` | {params:,} | {tv or '-'} | {best_cell} | {parity} |")
    return "\n".join(lines) + "\n\n" + _provenance(meta, PARITY)


def weights_table() -> str:
    """Every weights tag, by model, with its top-1 where one is published."""
    import resnet_flax
    from resnet_flax.io.weights import weights_for

    lines = ["| model | weights: tag suffix (top-1) |", "|---|---|"]
    for name in resnet_flax.list_models():
        cells = [
            f"`{w.suffix}`" + (f" ({w.top1:.1f})" if w.top1 is not None else "")
            for w in weights_for(name)
        ]
        if cells:
            lines.append(f"| `{name}` | {', '.join(cells)} |")
    return "\n".join(lines)


def config_keys() -> str:
    """Every configuration key, its default and its meaning (``configs/_base.py``)."""
    from train.config import documented_keys

    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in documented_keys():
        meaning = re.sub(r"(?<![\w`])('[^' ]*')", r"`\1`", meaning)  # literals as code
        lines.append(f"| `{key}` | `{default}` | {meaning.replace('|', '&#124;')} |")
    return "\n".join(lines)


def configurations() -> str:
    """Every named configuration: model, data, what a published run of its recipe reached,
    and what ``python -m bench.runs`` measured here, with the machine, date and command."""
    import importlib

    from train.config import CONFIGS, list_configs, load_config

    runs = _load(RUNS)
    lines = [
        "| config | what it trains | published | measured here (eval accuracy) |",
        "|---|---|---|---|",
    ]
    notes = []
    for name in list_configs():
        config = load_config(name)
        module = importlib.import_module(f"{CONFIGS}.{name}")
        paragraph = " ".join((module.__doc__ or "").strip().split("\n\n")[0].split())
        summary = re.split(r"(?<! al)\. ", paragraph)[0].removesuffix(".")
        run = runs.get(name)
        measured = "not measured"
        if run:
            measured = (
                f"{100 * run['accuracy']:.1f}% after {run['epochs']:g} epochs "
                f"(best {100 * run['best_accuracy']:.1f}%); training {run['train_s']:.0f} s"
            )
            if "setup_s" in run:
                measured += f", set-up {run['setup_s']:.0f} s"
            notes.append(f"`{name}`: {_provenance(run['machine'], RUNS)}")
        lines.append(
            f"| `{name}` | {summary} (`{config.model}`, `{config.dataset}`) | "
            f"{getattr(module, 'REFERENCE', '') or '-'} | {measured} |"
        )
    return "\n".join(lines) + ("\n\n" + "\n\n".join(notes) if notes else "")


def performance() -> str:
    """``bench/results.json`` as the bench prints it: the table, then the rounds."""
    from bench.__main__ import augment_line, round_lines, stream_line, table

    results = _load(BENCH)
    records = results.get("records", [])
    parts = [
        _provenance(results.get("machine", {}), BENCH),
        table(records),
        augment_line(records),
        stream_line(records),
        "\n".join(f"- {line}" for line in round_lines(records)),
    ]
    return "\n\n".join(p for p in parts if p)


GENERATED: dict[str, Callable[[], str]] = {
    "model-table": model_table,
    "weights-table": weights_table,
    "config-keys": config_keys,
    "configurations": configurations,
    "performance": performance,
}
