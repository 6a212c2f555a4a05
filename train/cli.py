"""``python -m train``: pick a config, override keys, train (or evaluate) in a work directory.

User errors (an unknown config or key, a badly typed value, missing data) end with exit code 2
and one ``error: ...`` line on stderr, no traceback. A run stopped by SIGTERM or Ctrl-C saves a
checkpoint, then exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), so a
scheduler can tell a preempted run from a finished one (0). The project raises every bad-input error
as a ``ValueError`` subclass (``ConfigError``, ``DataError``, ``CheckpointError``, ...), so
that is what is caught.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import ml_collections

from resnet_flax.io import paths

from .config import (
    ConfigError,
    apply_overrides,
    documented_keys,
    list_configs,
    load_config,
    validate,
)

PREFIX = "--config."
USAGE_ERROR = 2

EPILOG = f"""\
override any config key: {PREFIX}KEY=VALUE (values are JSON or Python literals, typed by the key)
  {PREFIX}learning_rate=0.05  {PREFIX}model_options.zero_init_residual=true
  {PREFIX}lr_boundaries=[30,60]  {PREFIX}pretrained=resnet34.tv_in1k

configs: {", ".join(list_configs())}
"""


def program(module: str, script: str) -> str:
    """How the user started this command: its console script's name (``script``) when
    installed and run by it, else ``python -m MODULE``."""
    started = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if started == script else f"python -m {module}"


def config_keys() -> str:
    """Every config key, its default and its meaning, from the defaults' own source."""
    lines = [
        f"  {key}={default}" + (f"  ({meaning})" if meaning else "")
        for key, default, meaning in documented_keys()
    ]
    return "config keys (default, meaning):\n" + "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program(__package__, "resnet-flax-train"),
        description="Train (or evaluate) a resnet-flax model from a config.",
        epilog=EPILOG + "\n" + config_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config", required=True, help="a config name (see below) or a path to a .py file"
    )
    parser.add_argument(
        "--workdir",
        help="checkpoints, metrics and config.json go here: a local path or gs:// "
        "(default: runs/CONFIG)",
    )
    parser.add_argument(
        "--eval_only",
        action="store_true",
        help="evaluate a checkpoint (config.checkpoint, default the workdir's latest)",
    )
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separate ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) from the other arguments."""
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith(PREFIX):
            rest.append(arg)
            continue
        key, equals, value = arg[len(PREFIX) :].partition("=")
        if not equals:
            value = next(args, None)
            if value is None or value.startswith("--"):
                raise ConfigError(f"{arg} needs a value: {arg}=VALUE.")
        if not key:
            raise ConfigError(f"{arg}: name a key, e.g. {PREFIX}learning_rate=0.05.")
        overrides.append((key, value))
    return rest, overrides


def resolve_config(
    name_or_path: str, overrides: list[tuple[str, str]]
) -> ml_collections.ConfigDict:
    """Load, override and validate a config; the result is locked (no new keys)."""
    config = load_config(name_or_path)
    apply_overrides(config, overrides)
    validate(config)
    config.lock()
    return config


def _check_before_run(config: ml_collections.ConfigDict, workdir: paths.Path) -> None:
    """Remote paths, the data_dir and the batch sizes against the devices, before anything
    is written."""
    from . import loop  # deferred: imports JAX and the data pipeline

    loop.check_before_run(config, workdir)


def _run(config: ml_collections.ConfigDict, workdir: paths.Path, eval_only: bool) -> dict:
    from . import loop  # deferred: imports JAX and the data pipeline

    if eval_only:
        return loop.evaluate(config, str(workdir))
    return loop.train_and_evaluate(config, str(workdir))


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit code. The run writes ``WORKDIR/config.json``
    (``eval_config.json`` for ``--eval_only``) once every check that can refuse it passed."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, overrides = split_overrides(argv)
        args = _parser().parse_args(rest)
        config = resolve_config(args.config, overrides)
        workdir = paths.as_path(args.workdir or f"runs/{config.name}")
        _check_before_run(config, workdir)
        results = _run(config, workdir, args.eval_only)
    except ValueError as error:  # the project's bad-input errors: ConfigError, DataError, ...
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume.", file=sys.stderr)
        return 130
    print(json.dumps(results, indent=2, default=float))
    if not args.eval_only:
        installed = program(__package__, "resnet-flax-train") == "resnet-flax-train"
        plot = "resnet-flax-plot" if installed else f"python -m {__package__}.plot"
        print(
            f"run in {workdir}: metrics.jsonl, TensorBoard events and checkpoints. Curves: "
            f"{plot} {workdir}",
            file=sys.stderr,
        )
    if results.get("signal"):
        print(
            f"stopped by {results['signal']} at step {results['step']} (saved): run the same "
            f"command again to resume.",
            file=sys.stderr,
        )
        return 128 + signal.Signals[results["signal"]].value
    return 0
