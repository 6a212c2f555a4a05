"""Fine-tune torchvision's ImageNet ResNet-34 on your own ImageFolder data set.

Set the weights file, the data folder (``DATA/train/<class>/*.jpg``, ``DATA/val/<class>/*.jpg``)
and, optionally, the class count (0 = the number of class folders)::

    python -m train --config resnet34_finetune --config.pretrained=resnet34-b627a593.pth \\
        --config.data_dir=DATA

The head is replaced by a new one with num_classes outputs. All layers train by default; with
``--config.freeze_backbone=true`` only the head does (a feature extractor, faster and better
for very small data sets).

Recipe: PyTorch's "Transfer learning for computer vision" tutorial (SGD momentum 0.9, lr 0.001
at batch 4), at batch 64 with lr 0.01 (below the linear-scaling 0.016, to keep the pretrained
features), cosine over 10 epochs, weight decay 1e-4, random-resized crop + flip at 224.
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = ""


def get_config() -> ml_collections.ConfigDict:
    """ResNet-34 from ImageNet weights on an ImageFolder data set, 10 epochs."""
    config = _base.get_config()
    config.model = "resnet34"
    config.pretrained = ""  # set: a torchvision resnet34 .pth (or .safetensors) file
    config.freeze_backbone = False
    config.dataset = "folder"
    config.data_dir = ""  # set: the folder holding train/ and val/
    config.train_split = "train"
    config.eval_split = "val"
    config.num_classes = 0  # 0 = one per class folder
    config.image_size = 224
    config.augment = True
    config.num_epochs = 10
    config.batch_size = 64
    config.eval_batch_size = 128
    config.optimizer = "sgd"
    config.learning_rate = 0.01
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.lr_schedule = "cosine"
    config.log_every_steps = 20
    return config
