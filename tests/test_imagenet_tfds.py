"""ImageNet the way JAX users prepare it: TFDS ``imagenet2012``, prepared by TFDS's own builder
(``python -m train.prepare``) from ImageNet's archives in miniature (conftest's ``imagenet``),
then read without TensorFlow, from a local disk and from a ``gs://`` bucket.

``resnet50_imagenet`` runs as configured but shrunk: 32x32 images, batches of 8, 2 epochs of
the 22 training images (2 steps each), evaluated on the 6 validation images (top-1, top-5).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from resnet_flax.io import paths
from train import cli
from train.checkpoint import Checkpoints, read_meta
from train.data import DataError, stream_info
from train.data.sources import folder_source, imagenet_source
from train.data.tfds_source import readable_versions

ROOT = Path(__file__).resolve().parents[1]
SHRUNK = [
    "--config.image_size=32",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    "--config.num_epochs=2",
    "--config.warmup_epochs=0",
    "--config.lr_boundaries=(1,)",  # the config's (30, 60, 80), scaled to 2 epochs
    "--config.learning_rate=0.01",
    "--config.log_every_steps=1",
]


def train(data_dir: str, workdir: paths.PathLike, *extra: str) -> int:
    """``python -m train --config resnet50_imagenet`` on ``data_dir``, shrunk, in-process."""
    args = ["--config", "resnet50_imagenet", "--workdir", str(workdir), *SHRUNK, *extra]
    return cli.main([*args, f"--config.data_dir={data_dir}"])


@pytest.fixture(scope="module")
def whole_run(imagenet, tmp_path_factory) -> Path:
    """The shrunk run on the local prepared data set, uninterrupted."""
    workdir = tmp_path_factory.mktemp("whole")
    assert train(str(imagenet.tfds), workdir) == 0
    return workdir


def test_tfds_labels_are_the_folder_routes_image_by_image(imagenet):
    """The same JPEGs through TFDS and as folders: the same class for every image; the bytes
    TFDS stores are the file's, except the CMYK and PNG files, which it makes RGB JPEGs."""
    for split, folder_split, count in (("train", "train", 22), ("validation", "val", 6)):
        tfds = imagenet_source(str(imagenet.tfds), split)
        folder = folder_source(str(imagenet.folders), folder_split)
        assert len(tfds) == len(folder) == count
        assert tfds.num_classes == 1000  # from the data set's info, not from the images
        assert tfds.class_names == sorted(tfds.class_names) and tfds.class_names[0] == "n01440764"
        by_file = {Path(r["source"]).name: r for r in map(folder.__getitem__, range(count))}
        for index in range(count):
            record = tfds[index]
            file = re.fullmatch(rf"TFDS imagenet2012 {split} record \d+ \((.+)\)", record["source"])
            theirs = by_file.pop(file[1])
            assert tfds.class_names[record["label"]] == folder.class_names[theirs["label"]], file[1]
            if file[1] in imagenet.converted:
                ours, original = (Image.open(io.BytesIO(r["image"])) for r in (record, theirs))
                assert (ours.format, ours.mode, ours.size) == ("JPEG", "RGB", original.size)
            else:
                assert record["image"] == theirs["image"], file[1]
        assert not by_file
    info = stream_info("imagenet2012", str(imagenet.tfds), "val")  # the folder name works too
    assert (info.size, info.num_classes) == (6, 1000)


def test_resnet50_imagenet_trains_evaluates_and_resumes_exactly(
    imagenet, whole_run, tmp_path, same_run, run_records, monkeypatch, sigterm_after
):
    """Streamed from TFDS: evaluated on validation each epoch with top-1 and top-5, killed by
    SIGTERM mid-epoch (at step 3's log line), resumed to the same run bit for bit; the classes
    are the data set's 1000."""
    evals = {step: r for (split, step), r in run_records(whole_run).items() if split == "eval"}
    assert sorted(evals) == [2, 4]
    for record in evals.values():
        assert {"accuracy", "top5"} <= set(record)
        assert (record["accuracy"] * 6) % 1 < 1e-9 and record["accuracy"] <= record["top5"]
    meta = read_meta(whole_run)
    assert meta["num_classes"] == 1000 and len(meta["class_names"]) == 1000
    assert meta["class_names"] == imagenet_source(str(imagenet.tfds), "train").class_names

    sigterm_after(3)
    assert train(str(imagenet.tfds), tmp_path) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert Checkpoints(f"{tmp_path}/checkpoints", read_only=True).all_steps() == [2, 3]
    assert train(str(imagenet.tfds), tmp_path) == 0
    same_run(tmp_path, whole_run, steps=4)


def test_eval_only_reads_it_without_tensorflow(imagenet, whole_run, tmp_path, run_records):
    """``--eval_only`` in a process where ``import tensorflow`` fails (grain's decoding
    workers included) gives the run's own last evaluation."""
    blocker = tmp_path / "no_tensorflow" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('reading must not need TensorFlow')")
    pythonpath = [str(blocker.parent), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(pythonpath)}
    args = ["--workdir", str(tmp_path / "eval"), "--eval_only", f"--config.checkpoint={whole_run}"]
    done = subprocess.run(
        [sys.executable, "-m", "train", "--config", "resnet50_imagenet", *args, *SHRUNK,
         f"--config.data_dir={imagenet.tfds}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(re.split(r"^(?=\{$)", done.stdout, flags=re.M)[-1])  # after config
    last = run_records(whole_run)["eval", 4]
    assert result["step"] == 4
    assert (result["accuracy"], result["top5"]) == (last["accuracy"], last["top5"])


def test_the_same_from_a_gcs_bucket(imagenet, whole_run, gcs, upload, tmp_path, same_run):
    """The prepared data set in a bucket: TFDS reads its info through gcsfs and its shards
    through array_record's own Cloud Storage client; stopped at step 3 (max_steps), resumed,
    and the same run as from the local disk; ``--eval_only`` reads it there too."""
    remote = f"{gcs}/tfds"
    upload(imagenet.tfds / "imagenet2012", f"{remote}/imagenet2012")
    assert train(remote, tmp_path, "--config.max_steps=3") == 0
    assert os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] == os.environ["STORAGE_EMULATOR_HOST"]
    assert train(remote, tmp_path) == 0
    same_run(tmp_path, whole_run, steps=4)
    assert train(remote, tmp_path, "--eval_only") == 0


# ---------------------------------------------------------------------------------- errors

HOW = ("python -m train.prepare --data_dir", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar",
       "downloads/manual", "tfds build imagenet2012", "resnet-flax[prepare]")  # fmt: skip


def _error(data_dir: Path, split: str = "train") -> str:
    with pytest.raises(DataError) as caught:
        stream_info("imagenet2012", str(data_dir), split)
    message = str(caught.value)
    assert all(part in message for part in HOW), message
    return message


def test_errors_say_what_is_missing_and_how_to_prepare(
    imagenet, prepare_imagenet, tmp_path, capsys
):
    (prepared,) = (imagenet.tfds / "imagenet2012").iterdir()  # the version TFDS prepares
    readable = readable_versions("imagenet2012")  # 5.1.0, 5.0.0 in tensorflow-datasets 4.9.10

    archives = tmp_path / "archives"  # the archives in place, not prepared
    shutil.copytree(imagenet.manual, archives / "downloads" / "manual")
    message = _error(archives)
    assert "holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in" in message
    assert "not yet prepared: run `python -m train.prepare" in message

    nothing = tmp_path / "nothing"  # neither route
    nothing.mkdir()
    assert "holds neither TFDS imagenet2012/ nor train/ and val/ folders" in _error(nothing)

    partial = tmp_path / "partial" / "imagenet2012" / "incomplete.AB12CD_5.1.0"
    shutil.copytree(prepared, partial, ignore=shutil.ignore_patterns("dataset_info.json"))
    assert "partly prepared imagenet2012 (incomplete.AB12CD_5.1.0" in _error(partial.parents[1])

    # an older version: read if this tensorflow-datasets still reads it, else refused
    for version in (readable[-1], "3.0.0"):
        older = tmp_path / version / "imagenet2012" / version
        shutil.copytree(prepared, older)
        info = json.loads((older / "dataset_info.json").read_text())
        (older / "dataset_info.json").write_text(json.dumps(info | {"version": version}))
    assert stream_info("imagenet2012", str(tmp_path / readable[-1]), "train").size == 22
    message = _error(tmp_path / "3.0.0")
    assert "holds imagenet2012 version 3.0.0, which tensorflow-datasets" in message
    assert f"cannot read (it reads {', '.join(readable)})" in message

    tfrecord = tmp_path / "tfrecord" / "imagenet2012" / prepared.name
    shutil.copytree(prepared, tfrecord)
    info = json.loads((tfrecord / "dataset_info.json").read_text())
    (tfrecord / "dataset_info.json").write_text(json.dumps(info | {"fileFormat": "tfrecord"}))
    assert "is prepared as tfrecord" in _error(tfrecord.parents[1])

    shard = tmp_path / "shard" / "imagenet2012" / prepared.name
    shutil.copytree(prepared, shard)
    next(shard.glob("imagenet2012-validation.array_record-*")).unlink()
    assert "holds 0 of the 1 files of split 'validation'" in _error(shard.parents[1], "val")

    # prepared from the validation archive alone (it comes first, being the smaller): the
    # command warns; training says the train split is missing, exit 2, nothing written
    alone = tmp_path / "alone"
    (alone / "manual").mkdir(parents=True)
    shutil.copy(imagenet.manual / "ILSVRC2012_img_val.tar", alone / "manual")
    done = prepare_imagenet(alone / "tfds", alone / "manual")
    assert done.returncode == 0 and "ILSVRC2012_img_train.tar is not in" in done.stderr
    assert "has no 'train' split, only 'validation'" in _error(alone / "tfds")
    assert train(str(alone / "tfds"), tmp_path / "run") == 2
    assert "has no 'train' split" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()


def test_prepare_without_archives_or_tensorflow(tmp_path, monkeypatch, capsys):
    from train import prepare as command

    manual = tmp_path / "downloads" / "manual"  # the default manual_dir
    manual.mkdir(parents=True)
    (manual / "ILSVRC2012_img_train.tar").write_bytes(b"")
    assert command.main(["--data_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err  # TFDS itself would stop on the missing file mid-way
    assert f"{manual} has no ILSVRC2012_img_val.tar, which TFDS's imagenet2012 builder" in error
    assert all(part in error for part in HOW), error

    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    real = importlib.util.find_spec
    no_tf = lambda name, *args: None if name == "tensorflow" else real(name, *args)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", no_tf)
    assert command.main(["--data_dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "needs TensorFlow" in error and "pip install 'resnet-flax[prepare]'" in error
