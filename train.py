"""``python -m train`` from a checkout: the trainer, :mod:`resnet_flax.train`.

Installed, the same program is ``resnet-flax-train`` (or ``python -m resnet_flax.train``); this
file is not part of the package, so no generic ``train`` module goes into site-packages.
"""

from resnet_flax.train.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
