"""The benchmark suite runs end to end at toy sizes and reports every section it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_flax.models.layers import compiler_options

pytest.importorskip("torch", reason="the suite's PyTorch peers need torch")
ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_run_writes_table_and_json(tmp_path):
    out = tmp_path / "results.json"
    args = ["--shapes", "resnet18_cifar:4:32,resnet20:4:32", "--repeats", "2", "--warmup", "0"]
    args += ["--jpegs", "4", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| train step, img/s | resnet18_cifar b4 32px |" in done.stdout
    assert "train resnet18_cifar b4 32px: ours / PyTorch per round" in done.stdout
    assert "| eval forward, img/s | resnet20 b4 32px |" in done.stdout  # a CIFAR ResNet too
    results = json.loads(out.read_text())
    seen = {(r["section"], r["contestant"]) for r in results["records"]}
    for section in ("train", "eval"):
        assert {(section, who) for who in ("ours", "torch", "flax")} <= seen
    assert {("compile", "ours"), ("compile", "flax")} <= seen
    assert {("loader", "ours"), ("loader", "torch")} <= seen
    assert {("augment", "augment"), ("augment", "train_step")} <= seen
    assert {("stream", "1 worker(s)"), ("stream", "2 worker(s)")} <= seen
    assert "one GPU consuming 3,000 img/s needs" in done.stdout
    assert all(r["value"] > 0 for r in results["records"])
    assert results["machine"]["compiler_options"] == compiler_options("cpu")
    assert results["machine"]["command"] == f"python -m bench {' '.join(args)}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", results["machine"]["date"])


def test_runs_record_what_a_configuration_reached_with_machine_date_and_command(tmp_path):
    """``python -m bench.runs``: the trainer's own command, its final and best evaluation, the
    training time, and where the figure comes from; results merge into the file."""
    out = tmp_path / "runs.json"
    out.write_text(json.dumps({"other": {"accuracy": 0.5}}))
    args = ["resnet20_digits", "--out", str(out), "--config.train_split=train[:128]",
            "--config.num_epochs=1", "--config.image_size=16"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench.runs", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert runs["other"] == {"accuracy": 0.5}
    run = runs["resnet20_digits"]
    assert 0 <= run["accuracy"] <= run["best_accuracy"] <= 1 and run["steps"] == 1
    assert run["train_s"] > 0 and "setup_s" not in run
    assert run["overrides"] == args[3:]
    assert run["machine"]["command"] == f"python -m bench.runs {' '.join(args)}"
    assert run["machine"]["cores"] and run["machine"]["date"]


def test_the_peers_build_he_et_al_cifar_resnets_as_ours():
    """resnet20/56 for PyTorch and plain Flax: the same parameters as create_model's."""
    import jax
    import jax.numpy as jnp

    from bench import contestants, flax_example
    from resnet_flax import create_model
    from resnet_flax.models.registry import count_parameters

    for name, n in (("resnet20", 3), ("resnet56", 9)):
        ours = count_parameters(create_model(name))
        torch_model = contestants._torch_cifar_resnet(n, 10)
        assert sum(p.numel() for p in torch_model.parameters()) == ours
        model = flax_example.MODELS[name]()
        shapes = jax.eval_shape(
            lambda m=model: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        )
        assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"])) == ours
    with pytest.raises(SystemExit, match="plain-Flax contestant has no resnet101"):
        contestants.flax("resnet101", 2, 32)


def test_bench_rejects_an_unknown_section():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--sections", "trian"], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown section(s) ['trian']" in done.stderr


def test_round_lines_count_the_rounds_ours_won():
    from bench.__main__ import round_lines

    shape = "m b1 8px"
    records = [
        {"section": "train", "shape": shape, "contestant": "ours", "seconds": [1.0, 2.0, 1.0]},
        {"section": "train", "shape": shape, "contestant": "torch", "seconds": [1.1, 1.0, 1.3]},
        {"section": "train", "shape": shape, "contestant": "flax", "seconds": [3.0, 3.0, 3.0]},
        {"section": "compile", "shape": shape, "contestant": "ours", "value": 1.0},
    ]
    assert round_lines(records) == [
        f"train {shape}: ours / PyTorch per round 0.50-1.30x (median 1.10x); "
        "ours faster in 2 of 3 rounds"
    ]


def test_accelerator_proof_runs_end_to_end_at_toy_sizes(tmp_path):
    """bench/accelerator.py on the CPU: every figure it promises, from a run this small."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 20), ("val", 10)):
        for i in range(count):
            folder = tmp_path / "cifar" / split / f"class{i % 10}"  # CIFAR-10's class count
            folder.mkdir(parents=True, exist_ok=True)
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "accelerator.json"
    args = ["--model", "resnet18_cifar", "--size", "32", "--max-batch", "4", "--repeats", "1",
            "--warmup", "0", "--no-torch-compile", "--cifar-dir", str(tmp_path / "cifar"),
            "--cifar-max-steps", "5", "--cifar-batch-size", "4", "--target", "0.0",
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench.accelerator", *args], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    seen = {(r["section"], r["contestant"]) for r in results["records"]}
    assert seen == {(s, w) for s in ("train", "eval") for w in ("ours", "flax", "torch")}
    assert all(r["batch"] == 4 and r["img_per_s"] > 0 for r in results["records"])
    run = results["cifar"]
    assert run["steps"] == 5 and run["seconds_to_target"] > 0 and run["epoch_at_target"] == 1
    assert "| train, img/s | resnet18_cifar b4 32px bf16 |" in done.stdout
