"""``python -m train --config NAME [--workdir DIR] [--config.KEY=VALUE ...] [--eval_only]``."""

from resnet_flax.train.cli import main

raise SystemExit(main())
