"""ResNet-20 on scikit-learn's 8x8 handwritten digits (upsampled to 32x32): a quick end-to-end
check that needs no download. Target: >= 97% test accuracy.

Train 1,500 / test 297 images. Recipe (ours, short): SGD momentum 0.9, lr 0.1 cosine, batch
128, weight decay 5e-4, 8 epochs (88 steps), no augmentation (flipping a digit changes its
meaning).
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "97% test accuracy: the target this configuration is tuned to"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-20 on the digits, 8 epochs."""
    config = _base.get_config()
    config.model = "resnet20"
    config.dataset = "digits"
    config.num_classes = 10
    config.image_size = 32
    config.augment = False
    config.num_epochs = 8
    config.batch_size = 128
    config.learning_rate = 0.1
    config.weight_decay = 5e-4
    config.label_smoothing = 0.0
    config.lr_schedule = "cosine"
    config.log_every_steps = 10
    return config
