"""metrics.jsonl lines, TensorBoard files, the progress display and the curves plot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from train import plot
from train.metrics import MetricsWriter, Progress, format_metrics


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_appends_flushed_json_lines_and_tensorboard(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path)
    record = writer.write(
        "train", 100, 0.5, loss=jnp.float32(2.25), accuracy=np.float64(0.125), lr=0.1,
        images_per_sec=1000,
    )  # fmt: skip
    # Flushed before close: a crash now would lose nothing.
    (line,) = _lines(tmp_path / "metrics.jsonl")
    assert line == record
    assert {k: line[k] for k in ("split", "step", "epoch", "loss", "accuracy", "lr")} == {
        "split": "train", "step": 100, "epoch": 0.5, "loss": 2.25, "accuracy": 0.125, "lr": 0.1,
    }  # fmt: skip
    assert line["images_per_sec"] == 1000 and isinstance(line["time"], float)
    writer.write("eval", 200, 1, loss=1.5, accuracy=0.5, top5=0.9)
    writer.close()
    lines = _lines(tmp_path / "metrics.jsonl")
    assert [(r["split"], r["step"], r.get("top5")) for r in lines] == [
        ("train", 100, None),
        ("eval", 200, 0.9),
    ]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0

    with MetricsWriter(tmp_path) as again:  # a resumed run appends
        again.write("train", 300, 1.5, loss=1.0, accuracy=0.75)
    assert len(_lines(tmp_path / "metrics.jsonl")) == 3


def test_writer_rejects_non_scalars(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as writer, pytest.raises(TypeError, match="'loss' must be a"):
        writer.write("train", 1, 0, loss=np.ones(3), accuracy=0.5)


def test_format_metrics() -> None:
    shown = format_metrics({"images_per_sec": 5120.7, "loss": np.float32(0.123456), "lr": 0.1})
    assert shown == {"img/s": "5121", "loss": "0.1235", "lr": "0.1"}


def test_progress_prints_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(25, initial=0, desc="demo", log_every_steps=10, file=out)
    for step in range(1, 26):
        progress.update(step, loss=1.0 / step, **({"lr": 0.5} if step == 10 else {}))
    progress.update(25)  # the last step again prints nothing new
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "demo step 10/25",
        "demo step 20/25",
        "demo step 25/25",
    ]
    assert "loss 0.1 | lr 0.5" in lines[0] and "loss 0.04 | lr 0.5" in lines[2]
    assert "eta" in lines[0]


def test_progress_resumes_mid_run() -> None:
    out = io.StringIO()
    progress = Progress(100, initial=45, log_every_steps=10, file=out)
    for step in range(46, 61):
        progress.update(step)
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == [
        "train step 50/100",
        "train step 60/100",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    out = _Terminal()
    with Progress(50, initial=10, desc="bar", file=out) as progress:
        progress.update(20, images_per_sec=1234.0, loss=0.5, lr=0.1)
        progress.update(50)
    text = out.getvalue()
    assert "bar" in text and "50/50" in text
    assert "img/s=1234" in text and "loss=0.5" in text and "lr=0.1" in text


def _run_metrics(workdir: Path) -> None:
    with MetricsWriter(workdir) as writer:
        for epoch in range(1, 6):
            for part in (0.5, 1.0):
                step = int((epoch - 1 + part) * 10)
                writer.write("train", step, epoch - 1 + part, loss=3 / epoch, accuracy=epoch / 6)
            writer.write("eval", epoch * 10, epoch, loss=3.2 / epoch, accuracy=epoch / 7)
    (workdir / "config.json").write_text(
        json.dumps({"name": "demo", "model": "resnet20", "dataset": "digits"})
    )


def test_plot_writes_a_png(tmp_path: Path, capsys) -> None:
    _run_metrics(tmp_path)
    assert plot.main([str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert capsys.readouterr().out.strip() == str(png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    out = tmp_path / "elsewhere" / "c.png"
    assert plot.main([str(tmp_path), "--out", str(out)]) == 0 and out.is_file()


def test_plot_reads_the_latest_record_per_step(tmp_path: Path, capsys) -> None:
    _run_metrics(tmp_path)
    with MetricsWriter(tmp_path) as writer:  # resumed from step 40: steps 45, 50 again
        writer.write("train", 45, 4.5, loss=9.0, accuracy=0.0)
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write('{"split": "train", "st')  # killed mid-write
    records = plot.read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert train[8]["loss"] == 9.0
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    series = plot.curves(records)
    assert series["eval"]["epoch"] == [1, 2, 3, 4, 5]


def test_plot_errors_name_the_file(tmp_path: Path, capsys) -> None:
    assert plot.main([str(tmp_path)]) == 2
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "has no metric records" in err
    assert not (tmp_path / "curves.png").exists()
