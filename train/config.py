"""Training configs: find one by name or path, apply typed overrides, validate.

A config is an ``ml_collections.ConfigDict`` from ``get_config()`` in ``configs/NAME.py`` (or
any ``.py`` file). Overrides are typed by the key they replace (ConfigDict's type safety);
every error is a :class:`ConfigError` naming the key, the bad value and the valid choices.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from resnet_flax.io import paths
from resnet_flax.models.checks import did_you_mean

# The configurations are one package under one name wherever the trainer runs from: in a
# checkout (configs/, mapped by the editable install) and installed alike.
CONFIGS = "resnet_flax.configs"
try:
    _base = importlib.import_module(f"{CONFIGS}._base")
except ModuleNotFoundError as error:  # a checkout that was never installed
    raise ModuleNotFoundError(
        f"{CONFIGS} is not importable ({error}): install the project, pip install -e '.[train]'",
        name=CONFIGS,
    ) from None
CONFIG_DIR = Path(_base.__file__).parent
DTYPES = ("float32", "bfloat16")
KERNELS = ("auto", "plain", "cpu")  # the model's impl (resnet_flax.models.layers)
# create_model options that come from top-level keys rather than model_options.
RESERVED_MODEL_OPTIONS = {
    "num_classes": "num_classes",
    "dtype": "dtype",
    "axis_name": "sync_batch_norm",
    "impl": "kernels",
}


class ConfigError(ValueError):
    """A config that cannot be loaded, overridden or used; the message says how to fix it."""


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default (``resnet_flax.configs._base.get_config()``)."""
    return _base.get_config()


_KEY_LINE = re.compile(r"^    config\.(\w+) = (.+?)(?:  # (.*))?$")


def documented_keys() -> list[tuple[str, str, str]]:
    """Every config key as ``(key, default as written, meaning)``, read from ``_base.py``'s own
    source: the comment block right above a key and the comment after it explain it."""
    keys, above = [], []
    for line in (CONFIG_DIR / "_base.py").read_text().splitlines():
        if match := _KEY_LINE.match(line):
            key, default, after = match.groups()
            keys.append((key, default, " ".join([*above, after or ""]).strip()))
        stripped = line.strip()
        above = [*above, stripped[2:]] if stripped.startswith("# ") else []
    return keys


def list_configs() -> list[str]:
    """The names ``--config`` accepts: the ``.py`` files in ``configs/`` not starting with ``_``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def _import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_path(name_or_path: str) -> Path:
    """The file of a config name (``resnet18_cifar``) or a path to a ``.py`` file."""
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError(f"config file {name_or_path} does not exist.")
        return path
    if name_or_path not in list_configs():
        raise ConfigError(
            f"unknown config {name_or_path!r}.{did_you_mean(name_or_path, list_configs())} "
            f"Available: {', '.join(list_configs())} (or a path to a .py file)."
        )
    return CONFIG_DIR / f"{name_or_path}.py"


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """Run ``get_config()`` of the named config; ``config.name`` is set to the file's stem."""
    path = config_path(name_or_path)
    try:
        if path.resolve().parent == CONFIG_DIR.resolve():  # ours: a module of the package
            module = importlib.import_module(f"{CONFIGS}.{path.stem}")
        else:
            module = _import_file(path)
    except (SyntaxError, ImportError) as error:
        raise ConfigError(f"{path} cannot be imported: {error}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path} defines no get_config() function.")
    try:
        config = module.get_config()
    except (TypeError, AttributeError) as error:  # ConfigDict's type checks, locked keys
        raise ConfigError(f"{path}: {error}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict.")
    config.name = path.stem
    return config


def parse_value(text: str) -> Any:
    """A command-line value as a JSON or Python literal (``0.1``, ``true``, ``[30,60]``), else
    the text itself."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set ``config.<key>`` (dotted) from command-line ``text``, typed by the existing value.

    String keys take the text as is; ``model_options`` accepts new keys (checked against the
    model by :func:`validate`); any other unknown key is an error suggesting close matches.
    """
    *parents, leaf = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        where = ".".join(parents[: depth + 1])
        if part not in node:
            raise ConfigError(f"unknown config key {where!r}.{did_you_mean(part, node.keys())}")
        node = node[part]
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"config key {where!r} is a {type(node).__name__}, not a group.")
    open_group = parents == ["model_options"]
    if leaf not in node and not open_group:
        raise ConfigError(f"unknown config key {key!r}.{did_you_mean(leaf, node.keys())}")
    old = node.get(leaf)
    if isinstance(old, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a group: set its keys, e.g. --config.{key}.X=...")
    value = _typed_value(key, old, text)
    wrong = f"--config.{key}={text}: got {_describe(value)}, expected {_type_name(old)}."
    if isinstance(value, bool) and isinstance(old, int | float) and not isinstance(old, bool):
        raise ConfigError(wrong)
    try:
        node[leaf] = value
    except TypeError:
        raise ConfigError(wrong) from None


BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
            "false": False, "no": False, "off": False, "0": False}  # fmt: skip


def parse_bool(key: str, text: str) -> bool:
    """A command-line boolean: true/false, yes/no, on/off, 1/0 (any case), else an error that
    names the key: the string "no" is truthy, so a mistyped boolean must not pass as one."""
    value = BOOLEANS.get(text.strip().lower())
    if value is None:
        raise ConfigError(
            f"--config.{key}={text}: expected a boolean (true/false, yes/no, on/off, 1/0)."
        )
    return value


def _typed_value(key: str, old: Any, text: str) -> Any:
    """Parse ``text`` for a key holding ``old``: string keys keep the text unless quoted."""
    if isinstance(old, bool):
        return parse_bool(key, text)
    if not isinstance(old, str):
        return parse_value(text)
    if text[:1] in ("'", '"'):
        value = parse_value(text)
        return value if isinstance(value, str) else text
    return text


def _type_name(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "a list such as [30,60]"
    return type(value).__name__


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]
) -> None:
    """Apply ``(dotted key, text)`` pairs in order (see :func:`override`)."""
    for key, text in overrides:
        override(config, key, text)


def _check_keys(config: ml_collections.ConfigDict) -> None:
    base = _base.get_config()
    missing = sorted(set(base.keys()) - set(config.keys()))
    if missing:
        raise ConfigError(
            f"config {config.get('name')!r} lacks keys {', '.join(missing)}: "
            "start from resnet_flax.configs._base.get_config()."
        )
    unknown = sorted(set(config.keys()) - set(base.keys()))
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}.{did_you_mean(unknown[0], base.keys())}"
        )
    for key, default in base.items():
        value = config[key]
        ok = isinstance(value, type(default)) or (
            isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)
        )
        if isinstance(default, list | tuple):
            ok = isinstance(value, list | tuple)
        if not ok or (isinstance(value, bool) and not isinstance(default, bool)):
            raise ConfigError(f"{key}={_describe(value)}: expected {_type_name(default)}.")
        if isinstance(default, float) and not math.isfinite(value):  # NaN passes every range
            raise ConfigError(f"{key}={value!r}: must be a finite number.")


def _choice(config: ml_collections.ConfigDict, key: str, valid: Iterable[str]) -> None:
    valid = list(valid)
    value = config[key]
    if value not in valid:
        raise ConfigError(
            f"{key}={value!r} is not valid.{did_you_mean(str(value), valid)} "
            f"Choose one of: {', '.join(valid)}."
        )


def _at_least(config: ml_collections.ConfigDict, minimum: int, keys: Iterable[str]) -> None:
    for key in keys:
        if config[key] < minimum:
            raise ConfigError(f"{key}={config[key]!r}: must be >= {minimum}.")


def _in_range(config: ml_collections.ConfigDict, key: str, low: float, high: float) -> None:
    """Check ``low <= config[key] < high``."""
    if not low <= config[key] < high:
        raise ConfigError(f"{key}={config[key]!r}: must be in [{low}, {high}).")


def _check_pretrained_tag(config: ml_collections.ConfigDict) -> None:
    """``pretrained`` that is no file: a weights tag of ``model``, or a ConfigError."""
    from resnet_flax.io.weights import WEIGHTS, by_tag, weights_for

    entry = by_tag(config.pretrained)
    if entry is None:
        tags = [w.tag for w in weights_for(config.model)]
        own = f"{config.model}'s: {', '.join(tags)}" if tags else f"none for {config.model}"
        close = did_you_mean(config.pretrained, [w.tag for w in WEIGHTS])
        raise ConfigError(
            f"pretrained={config.pretrained!r}: no such file or checkpoint directory, nor a "
            f"weights tag ({own}).{close}"
        )
    if entry.model != config.model:
        raise ConfigError(
            f"pretrained={config.pretrained!r} are {entry.model}'s weights, model is "
            f"{config.model!r}: set --config.model={entry.model} or pick {config.model}'s."
        )


def _check_model(config: ml_collections.ConfigDict) -> None:
    from resnet_flax.models.registry import list_models, model_options  # deferred: imports JAX

    _choice(config, "model", list_models())
    allowed = model_options(config.model)
    for key in config.model_options:
        if key in RESERVED_MODEL_OPTIONS:
            raise ConfigError(
                f"model_options.{key}: set the top-level key {RESERVED_MODEL_OPTIONS[key]!r} "
                "instead."
            )
        if key not in allowed:
            options = sorted(set(allowed) - set(RESERVED_MODEL_OPTIONS))
            hint = did_you_mean(key, options)
            raise ConfigError(
                f"model_options.{key} is not an option of {config.model}.{hint} "
                f"Options: {', '.join(options)}."
            )
        value = config.model_options[key]
        if isinstance(allowed[key], bool) and not isinstance(value, bool):
            # a command line's new key arrives as parsed text ("no" stays a string)
            value = parse_bool(f"model_options.{key}", str(value))
            del config.model_options[key]  # a field keeps its first type: set it anew
            config.model_options[key] = value


def _check_schedule(config: ml_collections.ConfigDict) -> None:
    boundaries = config.lr_boundaries
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in boundaries):
        raise ConfigError(f"lr_boundaries={list(boundaries)!r}: must be numbers of epochs.")
    if list(boundaries) != sorted(boundaries) or any(
        not 0 < b < config.num_epochs for b in boundaries
    ):
        raise ConfigError(
            f"lr_boundaries={list(boundaries)!r}: must be ascending epochs between 0 and "
            f"num_epochs={config.num_epochs}."
        )
    if config.lr_schedule == "piecewise" and not boundaries:
        raise ConfigError("lr_schedule='piecewise' needs lr_boundaries, e.g. [30,60,80].")
    if config.warmup_epochs >= config.num_epochs:
        raise ConfigError(
            f"warmup_epochs={config.warmup_epochs!r}: must be less than "
            f"num_epochs={config.num_epochs}."
        )


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Check every key (names, choices, ranges, model and its options); return ``config``."""
    from .data.registry import DATASETS
    from .optim import OPTIMIZERS, SCHEDULES

    _check_keys(config)
    _choice(config, "dataset", DATASETS)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "lr_schedule", SCHEDULES)
    _choice(config, "dtype", DTYPES)
    _choice(config, "kernels", KERNELS)
    _at_least(
        config,
        1,
        ("image_size", "num_epochs", "batch_size", "eval_batch_size", "eval_every_epochs",
         "log_every_steps", "keep_checkpoints"),
    )  # fmt: skip
    _at_least(
        config,
        0,
        ("num_classes", "keep_best", "checkpoint_every_steps", "max_steps",
         "weight_decay", "warmup_epochs"),
    )  # fmt: skip
    _at_least(config, -1, ("num_workers",))  # -1: sized from the host
    if config.learning_rate <= 0:
        raise ConfigError(f"learning_rate={config.learning_rate!r}: must be > 0.")
    _in_range(config, "momentum", 0.0, 1.0)
    _in_range(config, "label_smoothing", 0.0, 1.0)
    if not 0 < config.lr_decay_factor <= 1:
        raise ConfigError(f"lr_decay_factor={config.lr_decay_factor!r}: must be in (0, 1].")
    if config.nesterov and (config.optimizer != "sgd" or config.momentum == 0):
        raise ConfigError("nesterov=True needs optimizer='sgd' and momentum > 0.")
    _check_schedule(config)
    fixed = DATASETS[config.dataset].num_classes
    if fixed is not None and config.num_classes not in (0, fixed):
        raise ConfigError(
            f"num_classes={config.num_classes}: {config.dataset} has {fixed} classes; set "
            f"num_classes to {fixed} (or 0: the data set's own count)."
        )
    for key in ("data_dir", "pretrained", "checkpoint"):  # a scheme no library here serves
        if config[key]:
            try:
                paths.as_path(config[key])
            except paths.PathError as error:
                raise ConfigError(f"{key}={config[key]!r}: {error}") from None
    if config.pretrained and not paths.as_path(config.pretrained).exists():
        _check_pretrained_tag(config)
    if config.freeze_backbone and not config.pretrained:
        raise ConfigError(
            "freeze_backbone=True trains only the head of a pretrained model: set "
            "--config.pretrained=/path/to/weights.pth."
        )
    _check_model(config)
    return config


def save_config(config: ml_collections.ConfigDict, path: paths.PathLike) -> str:
    """Write ``config`` as JSON to ``path``; returns the text. A ConfigError names the path
    when it cannot be written."""
    path = paths.as_path(path)
    text = config.to_json(indent=2, sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as error:
        raise ConfigError(
            f"cannot write {path}: {error.strerror or error}; choose another --workdir."
        ) from None
    return text
