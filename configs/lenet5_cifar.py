"""LeNet-5 (ReLU, max-pooling) on CIFAR-10: a small, fast baseline.

Recipe: kuangliu/pytorch-cifar's shared recipe (which also lists LeNet) cut to a length that
suits a 62k-parameter network: SGD momentum 0.9, lr 0.05 at batch 128, weight decay 5e-4,
cosine over 50 epochs, pad-4 crop + flip. No BatchNorm, so no decay exclusions matter.
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = ""


def get_config() -> ml_collections.ConfigDict:
    """LeNet-5 on CIFAR-10, 50 epochs."""
    config = _base.get_config()
    config.model = "lenet5"
    config.dataset = "cifar10"
    config.num_classes = 10
    config.image_size = 32  # LeNet-5 takes exactly 32x32
    config.num_epochs = 50
    config.batch_size = 128
    config.learning_rate = 0.05
    config.weight_decay = 5e-4
    config.lr_schedule = "cosine"
    return config
