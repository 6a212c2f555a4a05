"""Prepared TensorFlow Datasets (array_record) read with `tfds.data_source`, without TensorFlow."""

from __future__ import annotations

from typing import Any

from resnet_flax.io import paths


class TfdsUnavailable(Exception):
    """`name` is not prepared (as array_record) in the data_dir; the message says why."""


def open_tfds(name: str, split: str, data_dir: str | None, *, decode_images: bool = True) -> Any:
    """The random-access TFDS source of `name`/`split`; raises TfdsUnavailable when unprepared.

    With decode_images=False, records hold the encoded image bytes (decode them yourself).
    """
    if data_dir is not None and not (paths.as_path(data_dir) / name).is_dir():
        raise TfdsUnavailable(f"there is no TFDS {name}/ folder in {data_dir}")
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise TfdsUnavailable(f"tensorflow-datasets is not installed ({error})") from error
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
