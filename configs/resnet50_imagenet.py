"""ResNet-50 on ImageNet-1k in 90 epochs: Goyal et al. 2017, "Accurate, Large Minibatch SGD".

Recipe: SGD momentum 0.9, lr 0.1 x batch / 256 (the linear scaling rule; 0.4 at batch 1024),
5 epochs of linear warmup, lr / 10 at epochs 30, 60 and 80, 90 epochs, weight decay 1e-4 not
applied to BatchNorm's scale and bias, the last BatchNorm of each residual block initialised
to zero (zero_init_residual), BatchNorm statistics per device (``sync_batch_norm=False``: the
paper normalises over each worker's own 32 images, and its batch-size results depend on that),
random-resized crop + flip at 224. bfloat16 compute. If you change batch_size, set learning_rate to
0.1 x batch_size / 256.

Data: TFDS ``imagenet2012``, prepared once from ImageNet's archives (``python -m train.prepare
--data_dir DATA_DIR``, with the archives in ``DATA_DIR/downloads/manual``), or ``train/`` and
``val/`` folders; ``data_dir`` points at either.
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = "76.40% top-1: Goyal et al. 2017, Table 1, batch 256 (23.60% error)"


def get_config() -> ml_collections.ConfigDict:
    """ResNet-50, ImageNet, batch 1024, 90 epochs."""
    config = _base.get_config()
    config.model = "resnet50"
    config.model_options.zero_init_residual = True
    config.dataset = "imagenet2012"
    config.train_split = "train"
    config.eval_split = "validation"
    config.image_size = 224
    config.num_classes = 1000
    config.augment = True
    config.num_epochs = 90
    config.batch_size = 1024
    config.eval_batch_size = 1024
    config.optimizer = "sgd"
    config.learning_rate = 0.1 * config.batch_size / 256
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.decay_norm_and_bias = False
    config.lr_schedule = "piecewise"
    config.warmup_epochs = 5.0
    config.lr_boundaries = (30, 60, 80)
    config.lr_decay_factor = 0.1
    config.dtype = "bfloat16"
    config.sync_batch_norm = False  # Goyal et al.: per-worker statistics (see the docstring)
    config.log_every_steps = 100
    return config
