"""``python -m train.plot WORKDIR [--out PATH]``: loss and accuracy curves of a run as a PNG.

Reads ``WORKDIR/metrics.jsonl`` (see ``train.metrics``); x is the epoch, one line per split
(train, eval, ...). Writes ``WORKDIR/curves.png`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import defaultdict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from resnet_flax.io import paths

from .metrics import METRICS_FILE

Curves = dict[str, dict[str, list[float]]]  # split -> {"epoch": [...], "loss": [...], ...}
# (metric, y-axis scale): loss spans orders of magnitude (an early eval can be 100x the train loss)
PANELS = (("loss", "log"), ("accuracy", "linear"))


class PlotError(ValueError):
    """No metrics to plot; the message names the file and what to do."""


def read_metrics(path: paths.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file, the last one per (split, step) kept, ordered by
    split (train first) and step.

    A line that is not JSON (a run killed mid-write) is skipped with a warning on stderr.
    """
    path = paths.as_path(path)
    if not path.is_file():
        raise PlotError(f"{path} does not exist: train a run into this workdir first.")
    latest: dict[tuple[str, int], dict] = {}
    bad = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            latest[(record["split"], record["step"])] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            bad += 1
    if bad:
        print(f"warning: skipped {bad} unreadable line(s) in {path}", file=sys.stderr)
    if not latest:
        raise PlotError(f"{path} has no metric records yet: plot again once the run has logged.")
    return sorted(latest.values(), key=lambda r: (r["split"] != "train", r["split"], r["step"]))


def curves(records: list[dict]) -> Curves:
    """Per split, the epochs and the values of each plotted metric (NaN where absent)."""
    out: Curves = defaultdict(lambda: defaultdict(list))
    for record in records:
        series = out[record["split"]]
        series["epoch"].append(record.get("epoch", float("nan")))
        for key, _ in PANELS:
            series[key].append(record.get(key, float("nan")))
    return out


def plot(workdir: paths.PathLike, out: paths.PathLike | None = None) -> paths.Path:
    """Draw loss and accuracy against epoch for every split; returns the PNG's path (either
    may be remote)."""
    workdir = paths.as_path(workdir)
    data = curves(read_metrics(workdir / METRICS_FILE))
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, (key, scale) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        for split, series in data.items():
            style = "-" if split == "train" else "o-"
            axes.plot(series["epoch"], series[key], style, markersize=3, label=split)
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.set_yscale(scale)
        axes.grid(alpha=0.3, which="both")
        axes.legend()
    figure.suptitle(_title(workdir))
    path = paths.as_path(out) if out else workdir / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    path.write_bytes(png.getvalue())
    return path


def _title(workdir: paths.Path) -> str:
    """The run's config name and model (from config.json) or the workdir's name."""
    try:
        config = json.loads((workdir / "config.json").read_text())
        return f"{config['name']} ({config['model']}, {config['dataset']})"
    except (OSError, ValueError, KeyError):
        return workdir.name


def main(argv: list[str] | None = None) -> int:
    """Plot a run's curves; exit code 2 with ``error: ...`` when there is nothing to plot."""
    from .cli import program

    parser = argparse.ArgumentParser(
        prog=program(f"{__package__}.plot", "resnet-flax-plot"), description=__doc__.split("\n")[0]
    )
    parser.add_argument("workdir", help="the run's work directory (holds metrics.jsonl)")
    parser.add_argument("--out", help="where to write the PNG (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    try:
        path = plot(args.workdir, args.out)
    except PlotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
