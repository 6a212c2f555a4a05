"""ResNet-110 on CIFAR-10: He et al. 2016, section 4.2, the recipe of ``resnet20_cifar`` plus
a warmup.

The paper warms ResNet-110 up at lr 0.01 "until the training error is below 80% (about 400
iterations)", then returns to 0.1. 400 iterations is about one epoch (390.6 steps), so this
config warms up for one epoch; the warmup here is linear from 0 to 0.1 (Goyal et al. 2017's
gradual form) rather than the paper's constant 0.01. Then lr / 10 at epochs 82 and 123, stop at
164 (32k, 48k, 64k iterations; see ``resnet20_cifar``).
"""

from __future__ import annotations

import ml_collections

from . import resnet20_cifar

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "93.39% test accuracy, mean of 5 runs: He et al. 2016, Table 6 (6.61% error)"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-110 on CIFAR-10, one warmup epoch, the paper's 64k-iteration schedule."""
    config = resnet20_cifar.get_config()
    config.model = "resnet110"
    config.warmup_epochs = 1.0
    return config
