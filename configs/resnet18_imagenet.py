"""ResNet-18 on ImageNet-1k in 90 epochs: the recipe of ``resnet50_imagenet`` (Goyal et al.
2017).

SGD momentum 0.9, lr 0.1 x batch / 256 (0.4 at batch 1024), 5 warmup epochs, lr / 10 at epochs
30, 60 and 80, 90 epochs, weight decay 1e-4 (not on BatchNorm), zero-initialised last BatchNorm
per block, per-device BatchNorm statistics, bfloat16. torchvision's own reference (batch 256,
lr 0.1, / 10 every 30 epochs) is the same recipe at a quarter of the batch.
"""

from __future__ import annotations

import ml_collections

from . import resnet50_imagenet

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "69.76% top-1: torchvision's ResNet-18 IMAGENET1K_V1 (this recipe at batch 256)"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-18, ImageNet, batch 1024, 90 epochs."""
    config = resnet50_imagenet.get_config()
    config.model = "resnet18"
    return config
