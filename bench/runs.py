"""``python -m bench.runs CONFIG ...``: train named configurations as a user would and record
what each reaches, for the docs' configuration table.

Each configuration runs through the trainer's own command (``python -m train --config CONFIG``)
in a fresh work directory; its final and best evaluation accuracy, steps, and the wall time of
the training command come from that run (``metrics.jsonl``). ``--setup`` first times the
README's set-up as written (a new virtual environment, ``pip install -e '.[train,cpu]'``) and
trains from that environment, so set-up and training are timed apart. Results are merged into
``--out`` (default ``docs/data/runs.json``) with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.provenance import machine

ROOT = Path(__file__).resolve().parent.parent


def _timed(cmd: list[str], **kwargs: Any) -> float:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)
    return time.perf_counter() - start


def set_up(venv: Path) -> tuple[str, float]:
    """The README's set-up into ``venv``: returns its python and the seconds it took."""
    start = time.perf_counter()
    _timed([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    _timed([python, "-m", "pip", "install", "-q", "-e", ".[train,cpu]"])
    return python, time.perf_counter() - start


def run(config: str, python: str, overrides: list[str]) -> dict[str, Any]:
    """Train ``config`` in a fresh workdir; what it reached and how long the command took."""
    with tempfile.TemporaryDirectory() as tmp:
        seconds = _timed([python, "-m", "train", "--config", config, "--workdir", tmp, *overrides])
        lines = (Path(tmp) / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if r["split"] == "eval"]
    if not evals:
        raise SystemExit(f"{config}: the run wrote no evaluation to metrics.jsonl")
    return {
        "accuracy": evals[-1]["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in evals),
        "steps": evals[-1]["step"],
        "epochs": evals[-1]["epoch"],
        "train_s": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.runs",
        description=__doc__,
        epilog="any other argument (--config.KEY=VALUE) goes to every training command",
    )
    p.add_argument("configs", nargs="+", help="configuration names (configs/)")
    p.add_argument("--setup", action="store_true", help="time the README's set-up first")
    p.add_argument("--out", default="docs/data/runs.json", help="JSON file to merge into")
    args, overrides = p.parse_known_args(argv)
    out = ROOT / args.out
    results = json.loads(out.read_text()) if out.exists() else {}
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        python, setup_s = set_up(Path(tmp) / "venv") if args.setup else (sys.executable, None)
        for config in args.configs:
            result = run(config, python, overrides)
            if setup_s is not None:
                result["setup_s"] = round(setup_s, 1)
            results[config] = result | {"overrides": overrides, "machine": info}
            print(f"[runs] {config}: {json.dumps(result)}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"[runs] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
