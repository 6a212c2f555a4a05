"""``python -m resnet_flax.predict``: the inference CLI (:mod:`resnet_flax.inference.predict`)."""

import sys

from resnet_flax.inference.predict import main

if __name__ == "__main__":
    sys.exit(main())
