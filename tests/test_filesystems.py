"""Runs and data on a non-local filesystem: ``gs://`` served by a Cloud Storage emulator on
127.0.0.1 (gcp-storage-emulator), reached the way a real bucket is: gcsfs through
``etils.epath`` for files, TensorStore's GCS driver (orbax) for checkpoint arrays.

A tiny digits run trains into ``gs://``, is stopped, resumes there, and must end bitwise as the
same run on a local disk; its metrics, TensorBoard events, config.json and plot are objects in
the bucket. An ImageFolder listing, a CIFAR archive and pretrained weights are read from it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import pickle
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_flax.io import paths
from train import cli
from train.checkpoint import CheckpointError, Checkpoints

pytest.importorskip("gcp_storage_emulator.server")
pytest.importorskip("gcsfs")


def _config_module(tmp_path: Path, config) -> Path:
    """A config file for ``python -m train --config FILE`` holding ``config``."""
    path = tmp_path / "tiny_config.py"
    path.write_text(
        "import json\nfrom ml_collections import ConfigDict\n\n"
        f"def get_config():\n    return ConfigDict(json.loads({config.to_json()!r}))\n"
    )
    return path


def test_a_run_on_gcs_stops_and_resumes_there_exactly(gcs, same_run, tmp_path, tiny_config):
    config = _config_module(tmp_path, tiny_config())
    local, remote = str(tmp_path / "local"), f"{gcs}/runs/tiny"
    assert cli.main(["--config", str(config), "--workdir", local]) == 0
    assert cli.main(["--config", str(config), "--workdir", remote, "--config.max_steps=3"]) == 0
    assert Checkpoints(f"{remote}/checkpoints", read_only=True).all_steps() == [3]
    assert cli.main(["--config", str(config), "--workdir", remote]) == 0

    same_run(remote, local, steps=8)

    run = paths.as_path(remote)
    assert json.loads((run / "config.json").read_text())["name"] == "tiny_config"
    # each step's checksums, written in place (an object store shows an upload whole)
    written = {p.name for p in (run / "checkpoints" / "8").iterdir()}
    assert "checksums.json" in written and "checksums.json.part" not in written
    events = list((run / "tensorboard").iterdir())
    assert len(events) == 2 and all(e.stat().length > 0 for e in events)  # one per launch
    assert cli.main(["--config", str(config), "--workdir", remote, "--eval_only"]) == 0
    assert (run / "eval_config.json").exists()

    from train.plot import plot

    png = plot(remote)
    assert str(png) == f"{remote}/curves.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_image_folder_cifar_archive_and_weights_read_from_gcs(gcs, upload, tmp_path, monkeypatch):
    from PIL import Image

    from train.data import cifar, folder_arrays, sources
    from train.data.request import Request

    monkeypatch.setenv("RESNET_FLAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name, count in (("cat", 3), ("dog", 2)):
        (tmp_path / "folder" / "train" / name).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / "folder" / "train" / name / f"{i}.png")
    upload(tmp_path / "folder", f"{gcs}/folder")

    def arrays(data_dir: str):
        request = Request(data_dir=data_dir, split="train", image_size=16, num_classes=0, seed=0)
        return folder_arrays.load_folder_arrays(request)

    (here, here_labels, names), (there, there_labels, there_names) = (
        arrays(str(tmp_path / "folder")),
        arrays(f"{gcs}/folder"),
    )
    np.testing.assert_array_equal(here, there)
    np.testing.assert_array_equal(here_labels, there_labels)
    assert names == there_names == ["cat", "dog"]
    source = sources.folder_source(f"{gcs}/folder", "train")
    assert source[4]["source"] == f"{gcs}/folder/train/dog/1.png"
    assert source[4]["image"] == (tmp_path / "folder/train/dog/1.png").read_bytes()

    # the official CIFAR-10 python archive's layout, two test images
    pixels = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    members = {
        "test_batch": {b"data": pixels, b"labels": [3, 7]},
        "batches.meta": {b"label_names": [f"class{i}".encode() for i in range(10)]},
    }
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, content in members.items():
            data = pickle.dumps(content)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    paths.as_path(f"{gcs}/cifar/cifar-10-python.tar.gz").write_bytes(archive.getvalue())
    md5 = hashlib.md5(archive.getvalue()).hexdigest()  # made the published one: it is checked
    published = dataclasses.replace(cifar.CIFAR["cifar10"], md5=md5)
    monkeypatch.setitem(cifar.CIFAR, "cifar10", published)
    images, labels, classes = cifar.load_cifar("cifar10", f"{gcs}/cifar", "test")
    np.testing.assert_array_equal(images, pixels.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == [3, 7] and classes[3] == "class3"

    from resnet_flax import create_model
    from resnet_flax.io.convert import load_torchvision, save_torchvision
    from resnet_flax.models.registry import init_variables

    variables = init_variables(create_model("resnet18", num_classes=5), 32)
    for suffix in (".pth", ".safetensors"):
        save_torchvision(tmp_path / f"weights{suffix}", "resnet18", variables)
        remote = f"{gcs}/weights/resnet18{suffix}"
        paths.as_path(remote).write_bytes((tmp_path / f"weights{suffix}").read_bytes())
        _, loaded = load_torchvision("resnet18", remote, num_classes=5)
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_remote_path_errors_name_the_fix(gcs, tiny_config, monkeypatch):
    from train.config import ConfigError, validate

    with pytest.raises(paths.PathError, match=r"memory://.*use a local path or gs://"):
        paths.as_path("memory://run")
    with pytest.raises(ConfigError, match=r"data_dir='memory://cifar': memory://cifar: no "):
        validate(tiny_config(check=False, data_dir="memory://cifar"))
    with pytest.raises(ConfigError, match="no such file"):
        validate(tiny_config(check=False, pretrained=f"{gcs}/missing.pth"))
    assert paths.as_path("file:///tmp/run") == paths.as_path("/tmp/run")

    real_find_spec = importlib.util.find_spec

    def without(missing: str):
        return lambda name, *a: None if name == missing else real_find_spec(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", without("s3fs"))
    with pytest.raises(paths.PathError, match=r"s3:// paths need s3fs: pip install s3fs .*\[s3\]"):
        paths.as_path("s3://bucket/run")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    with pytest.raises(CheckpointError, match=r"local paths and gs:// only"):
        Checkpoints("s3://bucket/run/checkpoints")
