"""The benchmark suite runs end to end at toy sizes and reports every section it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_flax import backend

pytest.importorskip("torch", reason="the suite's PyTorch peers need torch")
ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_run_writes_table_and_json(tmp_path):
    out = tmp_path / "results.json"
    args = ["--shapes", "resnet18_cifar:4:32", "--repeats", "2", "--warmup", "0"]
    args += ["--jpegs", "4", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| train step, img/s | resnet18_cifar b4 32px |" in done.stdout
    results = json.loads(out.read_text())
    seen = {(r["section"], r["contestant"]) for r in results["records"]}
    for section in ("train", "eval"):
        assert {(section, who) for who in ("ours", "torch", "flax")} <= seen
    assert {("compile", "ours"), ("compile", "flax")} <= seen
    assert {("loader", "ours"), ("loader", "torch")} <= seen
    assert {("augment", "augment"), ("augment", "train_step")} <= seen
    assert all(r["value"] > 0 for r in results["records"])
    assert results["machine"]["compiler_options"] == backend.compiler_options("cpu")


def test_bench_rejects_an_unknown_section():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--sections", "trian"], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown section(s) ['trian']" in done.stderr
