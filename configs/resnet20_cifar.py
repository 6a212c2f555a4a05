"""ResNet-20 on CIFAR-10: He et al. 2016, "Deep Residual Learning", section 4.2.

Paper: batch 128, SGD momentum 0.9, lr 0.1, weight decay 1e-4, lr divided by 10 at 32k and 48k
iterations, training stopped at 64k; pad-4 crop + flip; option-A (zero-padding) shortcuts.

Iterations to epochs: the 50,000-image train split at batch 128 is 50,000 / 128 = 390.6 steps
per epoch, so 32k, 48k and 64k iterations are 81.9, 122.9 and 163.8 epochs: boundaries at
epochs 82 and 123, 164 epochs (within 0.1% of the paper's iteration counts). The paper chose
that schedule on a 45k/5k train/val split; to train on it (351.6 steps per epoch: 91, 137, 182):
``--config.train_split='train[:45000]' --config.eval_split='train[45000:]'
--config.lr_boundaries=[91,137] --config.num_epochs=182``.
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "91.25% test accuracy: He et al. 2016, Table 6 (8.75% error)"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-20 on CIFAR-10, the paper's 64k-iteration schedule."""
    config = _base.get_config()
    config.model = "resnet20"
    config.dataset = "cifar10"
    config.num_classes = 10
    config.image_size = 32
    config.augment = True
    config.batch_size = 128
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.lr_schedule = "piecewise"
    config.lr_boundaries = (82, 123)
    config.lr_decay_factor = 0.1
    config.num_epochs = 164
    return config
