"""ImageNet-1k (ILSVRC 2012) as TFDS ``imagenet2012``: preparing it once, and saying how.

TFDS's own builder prepares it from the archives image-net.org hands out, which go in its
manual directory (``DATA_DIR/downloads/manual`` unless named): ``ILSVRC2012_img_train.tar`` (one
tar per class inside) and ``ILSVRC2012_img_val.tar`` (50,000 JPEGs; TFDS carries their labels).
It converts ImageNet's 22 CMYK JPEGs and its one PNG to RGB JPEGs, and writes array_record,
which the trainer reads without TensorFlow. Preparing needs TensorFlow (the ``prepare`` extra).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

from resnet_flax.io import paths

from .errors import DataError

NAME = "imagenet2012"
_TRAIN = __package__.rpartition(".")[0]  # train, or resnet_flax.train when installed
# split -> the archive of image-net.org it is prepared from
MANUAL_FILES = {"train": "ILSVRC2012_img_train.tar", "validation": "ILSVRC2012_img_val.tar"}


def default_manual_dir(data_dir: str) -> str:
    """Where TFDS looks for the archives when no manual directory is named."""
    return os.path.join(data_dir, "downloads", "manual")


def archives_in(manual_dir: str) -> dict[str, str]:
    """The archives ``manual_dir`` holds, by the split each is prepared into."""
    folder = paths.as_path(manual_dir)
    return {split: file for split, file in MANUAL_FILES.items() if (folder / file).exists()}


def prepare_command(data_dir: str) -> str:
    """The command that prepares ``imagenet2012`` in ``data_dir`` from the default manual
    directory, and TFDS's own equivalent, for error messages."""
    manual = default_manual_dir(data_dir)
    return (
        f"`python -m {_TRAIN}.prepare --data_dir {data_dir}` (TensorFlow is needed for this "
        "step only: pip install 'resnet-flax[prepare]'); TFDS's own "
        f"`tfds build {NAME} --data_dir {data_dir} --manual_dir {manual} "
        "--file_format array_record` does the same"
    )


def how_to_prepare(data_dir: str) -> str:
    """Where the archives go and the command that prepares ``imagenet2012`` in ``data_dir``."""
    files = " and ".join(MANUAL_FILES.values())
    return (
        f"To prepare it: put {files} (from image-net.org) in {default_manual_dir(data_dir)}, "
        f"then run {prepare_command(data_dir)}."
    )


def prepare(data_dir: str, manual_dir: str | None = None) -> str:
    """Prepare ``imagenet2012`` as array_record in ``data_dir`` from the archives in
    ``manual_dir``; returns the prepared folder. Without the train archive, the validation
    split alone is prepared (with a warning); a DataError without the validation archive (TFDS
    needs it for either split) or without TensorFlow."""
    manual_dir = manual_dir or default_manual_dir(data_dir)
    present = archives_in(manual_dir)
    if "validation" not in present:  # TFDS labels the validation files before it looks for train
        raise DataError(
            f"{manual_dir} has no {MANUAL_FILES['validation']}, which TFDS's {NAME} builder "
            f"reads even to prepare the train split alone. {how_to_prepare(data_dir)}"
        )
    if "train" not in present:
        message = f"{MANUAL_FILES['train']} is not in {manual_dir}: no train split."
        warnings.warn(message, stacklevel=2)
    if importlib.util.find_spec("tensorflow") is None:
        raise DataError(
            "Preparing imagenet2012 needs TensorFlow (TFDS's builder decodes and converts "
            "images with it): pip install 'resnet-flax[prepare]'. Reading it does not."
        )
    import tensorflow_datasets as tfds

    builder = tfds.builder(NAME, data_dir=data_dir, file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=config)
    return os.fspath(builder.data_path)
