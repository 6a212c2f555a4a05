"""Pre-activation ResNet-18 (CIFAR stem) on CIFAR-10.

Model: He et al. 2016, "Identity Mappings in Deep Residual Networks". Recipe: the same as
``resnet18_cifar``, kuangliu/pytorch-cifar's (which trains PreActResNet18 with it): SGD
momentum 0.9, lr 0.1 at batch 128, weight decay 5e-4, cosine over 200 epochs, pad-4 crop + flip.
"""

from __future__ import annotations

import ml_collections

from . import resnet18_cifar

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "95.11% test accuracy: kuangliu/pytorch-cifar's README for PreActResNet18"


def get_config() -> ml_collections.ConfigDict:
    """Pre-activation ResNet-18 on CIFAR-10, 200 epochs."""
    config = resnet18_cifar.get_config()
    config.model = "preact_resnet18_cifar"
    return config
