"""Prepared TensorFlow Datasets (array_record) read with `tfds.data_source`, without TensorFlow.

A data set TFDS prepared lives in ``DATA_DIR/NAME/VERSION/``: ``dataset_info.json`` (its
splits, their shard counts, its file format) beside the shards; an interrupted preparation
leaves ``DATA_DIR/NAME/incomplete.*`` instead. :func:`open_tfds` reads that folder first, so
what is missing (a version, a split, shards, the array_record format) is named in the error
rather than found out from TFDS's own message.

On ``gs://``, TFDS's array_record reader opens the shards with its own C++ Cloud Storage client
(google-cloud-cpp), not with gcsfs: it takes credentials the same way, but a local server must
be named to it by ``CLOUD_STORAGE_EMULATOR_ENDPOINT``, which is set from gcsfs's
``STORAGE_EMULATOR_HOST`` when only that is set.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from resnet_flax.io import paths

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
INFO = "dataset_info.json"  # without it, a version folder is not a finished one


class TfdsUnavailable(Exception):
    """`name` is not prepared (as array_record) in the data_dir; the message says why."""


def _tfds() -> Any:
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise TfdsUnavailable(f"tensorflow-datasets is not installed ({error})") from error
    return tfds


def reader_version(name: str) -> str:
    """The version of `name` this tensorflow-datasets reads by default."""
    return str(_tfds().builder_cls(name).VERSION)


def missing(name: str, split: str, data_dir: str) -> str | None:
    """What keeps `name`/`split` from being read out of `data_dir` (None: nothing visible)."""
    root = paths.as_path(data_dir) / name
    if not root.is_dir():
        return f"there is no TFDS {name}/ folder in {data_dir}"
    entries = sorted(p.name for p in root.iterdir())
    versions = [e for e in entries if _VERSION.match(e) and (root / e / INFO).exists()]
    wanted = reader_version(name)
    if wanted not in versions:
        tfds = _tfds()
        started = [e for e in entries if e.startswith("incomplete.") or _VERSION.match(e)]
        if versions:
            return (
                f"{root} holds {name} version {', '.join(versions)}, but tensorflow-datasets "
                f"{tfds.__version__} reads version {wanted}"
            )
        if started:
            return (
                f"{root} holds only a partly prepared {name} ({', '.join(started)}: what an "
                "interrupted preparation leaves); delete it and prepare again"
            )
        return f"{root} holds no prepared version of {name}"
    folder = root / wanted
    info = json.loads((folder / INFO).read_text())
    file_format = info.get("fileFormat", "tfrecord")
    if file_format != "array_record":
        return (
            f"{folder} is prepared as {file_format}; reading without TensorFlow needs "
            "array_record (prepare it again with file_format='array_record')"
        )
    splits = {s["name"]: len(s.get("shardLengths", [])) for s in info.get("splits", [])}
    if split not in splits:
        return (
            f"{folder} has no {split!r} split, only {', '.join(map(repr, splits)) or 'none'} "
            f"(it was prepared without the {split} files: delete {folder} and prepare again "
            "with them)"
        )
    shards = [p.name for p in folder.glob(f"{name}-{split}.array_record-*")]
    if len(shards) != splits[split]:
        return (
            f"{folder} holds {len(shards)} of the {splits[split]} files of split {split!r}: "
            "copy the missing ones, or prepare it again"
        )
    return None


def _point_cpp_client_at_emulator(data_dir: str) -> None:
    emulated = paths.scheme(data_dir) == "gs" and os.environ.get("STORAGE_EMULATOR_HOST")
    if emulated and not os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = os.environ["STORAGE_EMULATOR_HOST"]


def open_tfds(name: str, split: str, data_dir: str | None, *, decode_images: bool = True) -> Any:
    """The random-access TFDS source of `name`/`split`; raises TfdsUnavailable when unprepared.

    With decode_images=False, records hold the encoded image bytes (decode them yourself).
    A slice such as ``train[:100]`` is checked as its split, ``train``.
    """
    if data_dir is not None:
        for part in split.split("+"):
            reason = missing(name, part.partition("[")[0].strip(), data_dir)
            if reason is not None:
                raise TfdsUnavailable(reason)
        _point_cpp_client_at_emulator(data_dir)
    tfds = _tfds()
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    try:
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )
    except Exception as error:  # tfds raises many kinds; all mean "not usable here"
        where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise TfdsUnavailable(
            f"TFDS {name!r} split {split!r} is not prepared as array_record in {where} ({reason})"
        ) from error


def tfds_class_names(source: Any) -> list[str]:
    """Label names from a TFDS source's dataset info."""
    return list(source.dataset_info.features["label"].names)
