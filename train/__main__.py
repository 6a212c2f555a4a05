"""``python -m train --config NAME [--workdir DIR] [--config.KEY=VALUE ...] [--eval_only]``."""

from .cli import main

raise SystemExit(main())
