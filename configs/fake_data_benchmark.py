"""Training throughput of ResNet-50 at 224x224 on random data (no download, no disk reads).

60 steps of batch 256 in bfloat16; the first steps include compilation, so read images/s from
the later log lines. Checkpoints and evaluation are pushed past the end of the run.
"""

from __future__ import annotations

import ml_collections

from . import _base

# What a published run of this recipe reached ('' = none published); the docs' table of
# configurations shows it beside what `python -m bench.runs` measured.
REFERENCE = ""


def get_config() -> ml_collections.ConfigDict:
    """ResNet-50, fake ImageNet-size data, batch 256, 60 steps."""
    config = _base.get_config()
    config.model = "resnet50"
    config.dataset = "fake"
    config.image_size = 224
    config.num_classes = 1000
    config.augment = False
    config.batch_size = 256
    config.eval_batch_size = 256
    config.learning_rate = 0.1
    config.weight_decay = 1e-4
    config.lr_schedule = "constant"
    config.dtype = "bfloat16"
    config.num_epochs = 100  # more than max_steps needs: max_steps ends the run
    config.max_steps = 60
    config.eval_every_epochs = 100
    config.checkpoint_every_steps = 100_000
    config.keep_checkpoints = 1
    config.keep_best = 0
    config.log_every_steps = 10
    return config
