"""Prepare TFDS ``imagenet2012`` once, as array_record, from ImageNet's archives.

    python -m train.prepare --data_dir DATA_DIR [--manual_dir DIR]

The archives (``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar``) go in ``--manual_dir``
(default ``DATA_DIR/downloads/manual``); training then reads ``--config.data_dir=DATA_DIR``.
Needs TensorFlow: ``pip install 'resnet-flax[prepare]'``.
"""

from __future__ import annotations

import argparse
import sys

from .data import DataError
from .data.imagenet import NAME, prepare


def main(argv: list[str] | None = None) -> int:
    """Prepare and print the prepared folder; exit code 2 with ``error: ...`` on bad input."""
    from .cli import program

    parser = argparse.ArgumentParser(
        prog=program(f"{__package__}.prepare", "resnet-flax-prepare"),
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--data_dir", required=True, help="where the prepared data set goes")
    parser.add_argument(
        "--manual_dir", help="the folder holding the archives (default DATA_DIR/downloads/manual)"
    )
    args = parser.parse_args(argv)
    try:
        folder = prepare(args.data_dir, args.manual_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{NAME} prepared in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
