"""ResNet-18 (CIFAR stem) on CIFAR-10 in 16 epochs: the accelerator recipe, for 94% fast.

One-cycle learning rate (30% rising), SGD with Nesterov momentum 0.9, lr 0.4 at batch 512
(0.1 x 512 / 128, the linear scaling rule from ``resnet18_cifar``), weight decay 5e-4, label
smoothing 0.1, bfloat16 compute, pad-4 crop + flip. Evaluated every epoch, so the time to a
target accuracy can be read off ``metrics.jsonl`` (``bench/accelerator.py`` does).
"""

from __future__ import annotations

import ml_collections

from . import resnet18_cifar

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "94% val accuracy is the goal the accelerator proof times"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-18 on CIFAR-10, 16 epochs, batch 512, bfloat16."""
    config = resnet18_cifar.get_config()
    config.num_epochs = 16
    config.batch_size = 512
    config.eval_batch_size = 1000
    config.learning_rate = 0.4
    config.nesterov = True
    config.lr_schedule = "onecycle"
    config.label_smoothing = 0.1
    config.dtype = "bfloat16"
    config.eval_every_epochs = 1
    config.log_every_steps = 20
    return config
