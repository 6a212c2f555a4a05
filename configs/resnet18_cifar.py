"""ResNet-18 (CIFAR stem) on CIFAR-10: the headline recipe.

Recipe of kuangliu/pytorch-cifar (https://github.com/kuangliu/pytorch-cifar, main.py): SGD with
momentum 0.9, lr 0.1 at batch 128, weight decay 5e-4 on every parameter, cosine annealing over
200 epochs, no warmup; augmentation RandomCrop(32, padding=4) + RandomHorizontalFlip.
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "93.02% test accuracy: kuangliu/pytorch-cifar's README for ResNet18"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-18 on CIFAR-10, 200 epochs."""
    config = _base.get_config()
    config.model = "resnet18_cifar"
    config.dataset = "cifar10"
    config.num_classes = 10
    config.image_size = 32
    config.augment = True
    config.num_epochs = 200
    config.batch_size = 128
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 5e-4
    config.lr_schedule = "cosine"
    config.log_every_steps = 100
    return config
