"""Prepared TensorFlow Datasets (array_record) read with `tfds.data_source`, without TensorFlow.

A data set TFDS prepared lives in ``DATA_DIR/NAME/VERSION/``: ``dataset_info.json`` (its
splits, their shard counts, its file format) beside the shards; an interrupted preparation
leaves ``DATA_DIR/NAME/incomplete.*`` instead. :func:`open_tfds` reads that folder first: it
reads the newest prepared version this tensorflow-datasets can (its default or one it still
supports), and names what is missing (a version, a split, shards, the array_record format)
rather than leaving it to TFDS's own message.

On ``gs://``, TFDS's array_record reader opens the shards with its own C++ Cloud Storage client
(google-cloud-cpp), not with gcsfs: it finds Application Default Credentials as gcsfs does, but a
local server must be named to it by ``CLOUD_STORAGE_EMULATOR_ENDPOINT``, which is set from gcsfs's
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


def readable_versions(name: str) -> list[str]:
    """The versions of `name` this tensorflow-datasets reads, its default first."""
    builder = _tfds().builder_cls(name)
    return [str(v) for v in (builder.VERSION, *builder.SUPPORTED_VERSIONS)]


def prepared_version(name: str, splits: list[str], data_dir: str) -> str:
    """The version of `name` to read from `data_dir` (the newest prepared one this
    tensorflow-datasets reads) once it is seen to hold `splits` as array_record; raises
    TfdsUnavailable saying what is missing."""
    root = paths.as_path(data_dir) / name
    if not root.is_dir():
        raise TfdsUnavailable(f"there is no TFDS {name}/ folder in {data_dir}")
    entries = sorted(p.name for p in root.iterdir())
    prepared = [e for e in entries if _VERSION.match(e) and (root / e / INFO).exists()]
    readable = readable_versions(name)
    usable = [v for v in readable if v in prepared]
    if not usable:
        release = f"tensorflow-datasets {_tfds().__version__}"
        started = [e for e in entries if e.startswith("incomplete.") or _VERSION.match(e)]
        if prepared:
            raise TfdsUnavailable(
                f"{root} holds {name} version {', '.join(prepared)}, which {release} cannot "
                f"read (it reads {', '.join(readable)})"
            )
        if started:
            raise TfdsUnavailable(
                f"{root} holds only a partly prepared {name} ({', '.join(started)}: what an "
                "interrupted preparation leaves); delete it and prepare again"
            )
        raise TfdsUnavailable(f"{root} holds no prepared version of {name}")
    folder = root / usable[0]
    info = json.loads((folder / INFO).read_text())
    file_format = info.get("fileFormat", "tfrecord")
    if file_format != "array_record":
        raise TfdsUnavailable(
            f"{folder} is prepared as {file_format}; reading without TensorFlow needs "
            "array_record (delete it and prepare again)"
        )
    shard_counts = {s["name"]: len(s.get("shardLengths", [])) for s in info.get("splits", [])}
    for split in splits:
        if split not in shard_counts:
            held = ", ".join(map(repr, shard_counts)) or "none"
            raise TfdsUnavailable(
                f"{folder} has no {split!r} split, only {held} (it was prepared without the "
                f"{split} files: delete {folder} and prepare again with them)"
            )
        shards = list(folder.glob(f"{name}-{split}.array_record-*"))
        if len(shards) != shard_counts[split]:
            raise TfdsUnavailable(
                f"{folder} holds {len(shards)} of the {shard_counts[split]} files of split "
                f"{split!r}: copy the missing ones, or prepare it again"
            )
    return usable[0]


def _point_cpp_client_at_emulator(data_dir: str) -> None:
    emulated = paths.scheme(data_dir) == "gs" and os.environ.get("STORAGE_EMULATOR_HOST")
    if emulated and not os.environ.get("CLOUD_STORAGE_EMULATOR_ENDPOINT"):
        os.environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] = os.environ["STORAGE_EMULATOR_HOST"]


def open_tfds(
    name: str,
    split: str,
    data_dir: str | None,
    *,
    decode_images: bool = True,
    version: str | None = None,
) -> Any:
    """The random-access TFDS source of `name`/`split`; raises TfdsUnavailable when unprepared.

    With decode_images=False, records hold the encoded image bytes (decode them yourself).
    In a ``data_dir``, the version read is :func:`prepared_version`'s, checked first (a slice
    such as ``train[:100]`` as its split, ``train``), unless ``version`` names one already
    checked, as a worker process reopening a source does.
    """
    versioned = name if version is None else f"{name}:{version}"
    if data_dir is not None:
        if version is None:
            splits = [part.partition("[")[0].strip() for part in split.split("+")]
            versioned = f"{name}:{prepared_version(name, splits, data_dir)}"
        _point_cpp_client_at_emulator(data_dir)
    tfds = _tfds()
    decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    try:
        return tfds.data_source(
            versioned, split=split, data_dir=data_dir, download=False, decoders=decoders
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
