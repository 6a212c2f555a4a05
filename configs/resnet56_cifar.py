"""ResNet-56 on CIFAR-10: He et al. 2016, section 4.2, the recipe of ``resnet20_cifar``.

Batch 128, SGD momentum 0.9, lr 0.1, weight decay 1e-4, lr / 10 at 32k and 48k iterations,
stop at 64k: epochs 82, 123 and 164 on the 50k train split (see ``resnet20_cifar``).
"""

from __future__ import annotations

import ml_collections

from . import resnet20_cifar

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "93.03% test accuracy: He et al. 2016, Table 6 (6.97% error)"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-56 on CIFAR-10, the paper's 64k-iteration schedule."""
    config = resnet20_cifar.get_config()
    config.model = "resnet56"
    return config
