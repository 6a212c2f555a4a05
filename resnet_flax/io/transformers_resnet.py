"""transformers' ResNets (``microsoft/resnet-18`` ... ``-152``) in and out.

transformers' ``ResNetForImageClassification`` is torchvision's ResNet (v1.5) under its own key
layout, described by a ``config.json``. Reading one is choosing the registry's name from
``layer_type`` and ``depths``, the options from the other fields, and renaming keys:

===========================================================  ==========================
transformers key                                             torchvision key
===========================================================  ==========================
``resnet.embedder.embedder.convolution.weight``              ``conv1.weight``
``resnet.embedder.embedder.normalization.*``                 ``bn1.*``
``resnet.encoder.stages.I.layers.J.layer.K.convolution.*``   ``layerI+1.J.convK+1.*``
``resnet.encoder.stages.I.layers.J.layer.K.normalization.*`` ``layerI+1.J.bnK+1.*``
``resnet.encoder.stages.I.layers.J.shortcut.convolution.*``  ``layerI+1.J.downsample.0.*``
``resnet.encoder.stages.I.layers.J.shortcut.normalization.*`` ``layerI+1.J.downsample.1.*``
``classifier.1.*``                                           ``fc.*``
===========================================================  ==========================

A folder is what ``save_pretrained`` writes (``config.json`` and ``model.safetensors``); a
repository id (``microsoft/resnet-50``) is fetched from the Hugging Face hub as timm's tags are.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import numpy as np

from resnet_flax.io.convert import export_torchvision, load_torchvision
from resnet_flax.io.download import WeightsError, hub_file
from resnet_flax.io.pth import read_state_dict, write_safetensors
from resnet_flax.models.registry import create_model
from resnet_flax.models.resnet import BasicBlock, Bottleneck, ResNet

# (layer_type, depths) -> the registry's name
_NAMES = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
_REPOSITORY = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# transformers' key pattern -> torchvision's, and back
_TO_TORCHVISION = (
    (r"^resnet\.embedder\.embedder\.convolution\.", "conv1."),
    (r"^resnet\.embedder\.embedder\.normalization\.", "bn1."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", "conv"),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", "bn"),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", "downsample.0."),
    (r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", "downsample.1."),
    (r"^classifier\.1\.", "fc."),
)


class TransformersConfigError(ValueError):
    """A transformers ResNet config that the registry's ResNets cannot express exactly."""


def is_transformers_source(source: str) -> bool:
    """Whether ``source`` is a folder (``save_pretrained``'s) or a hub repository id
    (``owner/name``), rather than one of the registry's names or tags."""
    return os.path.isdir(source) or bool(_REPOSITORY.match(source) and not os.path.exists(source))


def architecture(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registry's name and the options that build exactly the network ``config`` (a
    transformers ``ResNetConfig`` as a dict) describes; :class:`TransformersConfigError` naming
    the field that no option expresses."""
    layer_type = config.get("layer_type", "bottleneck")
    depths = tuple(config.get("depths", (3, 4, 6, 3)))
    if config.get("model_type", "resnet") != "resnet":
        raise TransformersConfigError(
            f"model_type is {config.get('model_type')!r}: only transformers' ResNet ('resnet') "
            f"converts."
        )
    if (layer_type, depths) not in _NAMES:
        known = ", ".join(f"{t} {list(d)}" for t, d in _NAMES)
        raise TransformersConfigError(
            f"layer_type {layer_type!r} with depths {list(depths)}: no registry ResNet has it "
            f"(known: {known})."
        )
    if config.get("downsample_in_first_stage", False):
        raise TransformersConfigError(
            "downsample_in_first_stage=true (a strided first stage): no registry ResNet has it."
        )
    if config.get("hidden_act", "relu") != "relu":
        raise TransformersConfigError(
            f"hidden_act {config['hidden_act']!r}: the registry's ResNets use relu."
        )
    name = _NAMES[(layer_type, depths)]
    options: dict[str, Any] = {"num_classes": _num_labels(config)}
    expansion = 4 if layer_type == "bottleneck" else 1
    hidden = tuple(config.get("hidden_sizes", ()))
    if any(h % expansion for h in hidden):
        raise TransformersConfigError(
            f"hidden_sizes {list(hidden)}: a bottleneck stage's width is a multiple of 4."
        )
    widths = tuple(h // expansion for h in hidden)
    if widths and widths != (64, 128, 256, 512):
        options["widths"] = widths
    if (embedding := config.get("embedding_size", 64)) != 64:
        options["stem_width"] = embedding
    if (channels := config.get("num_channels", 3)) != 3:
        options["in_channels"] = channels
    if config.get("downsample_in_bottleneck", False):
        options["stride_in_1x1"] = True
    return name, options


def read_config(source: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a folder or a hub repository."""
    path = _local(source, "config.json")
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise TransformersConfigError(f"{path}: not a readable config.json ({error})") from None


def read_labels(source: str | os.PathLike) -> list[str]:
    """The class names of a transformers ResNet (its config's ``id2label``, in id order)."""
    config = read_config(source)
    labels = {int(k): v for k, v in config.get("id2label", {}).items()}
    return [labels.get(i, f"LABEL_{i}") for i in range(_num_labels(config))]


def load_transformers(source: str | os.PathLike, **options: Any) -> tuple[nn.Module, dict]:
    """``(model, variables)`` from a transformers ResNet: a folder (``config.json`` and
    ``model.safetensors`` or ``pytorch_model.bin``) or a hub repository id. ``options`` go to
    the model as :func:`resnet_flax.io.convert.load_torchvision` takes them."""
    name, fixed = architecture(read_config(source))
    weights = _local(source, *_WEIGHTS_FILES)
    state = read_state_dict(weights)
    return load_torchvision(name, to_torchvision(state), **(fixed | options))


def to_torchvision(state: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' keys renamed to torchvision's (the table above)."""
    return {_rename(key): value for key, value in state.items()}


def _rename(key: str) -> str:
    for pattern, replacement in _TO_TORCHVISION:
        match = re.match(pattern, key)
        if match is None:
            continue
        rest = key[match.end() :]
        if replacement in ("conv", "bn"):
            stage, block, layer = (int(g) for g in match.groups())
            return f"layer{stage + 1}.{block}.{replacement}{layer + 1}.{rest}"
        if match.groups():
            stage, block = (int(g) for g in match.groups())
            return f"layer{stage + 1}.{block}.{replacement}{rest}"
        return replacement + rest
    return key  # left as it is: load_torchvision names what does not fit


def from_torchvision(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """torchvision's keys renamed to transformers' (the table above, backwards)."""
    out = {}
    for key, value in state.items():
        if m := re.match(r"^layer(\d+)\.(\d+)\.(conv|bn)(\d+)\.(.*)$", key):
            stage, block, kind, layer, rest = m.groups()
            part = "convolution" if kind == "conv" else "normalization"
            new = (f"resnet.encoder.stages.{int(stage) - 1}.layers.{block}.layer."
                   f"{int(layer) - 1}.{part}.{rest}")  # fmt: skip
        elif m := re.match(r"^layer(\d+)\.(\d+)\.downsample\.([01])\.(.*)$", key):
            stage, block, index, rest = m.groups()
            part = "convolution" if index == "0" else "normalization"
            new = f"resnet.encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}.{rest}"
        elif key.startswith("conv1."):
            new = "resnet.embedder.embedder.convolution." + key[len("conv1.") :]
        elif key.startswith("bn1."):
            new = "resnet.embedder.embedder.normalization." + key[len("bn1.") :]
        elif key.startswith("fc."):
            new = "classifier.1." + key[len("fc.") :]
        else:
            raise ValueError(f"{key!r} has no place in transformers' ResNet")
        out[new] = value
    return out


def save_transformers(
    folder: str | os.PathLike,
    name: str,
    variables: dict[str, Any],
    labels: Sequence[str] | None = None,
    **options: Any,
) -> Path:
    """Write ``folder`` as ``save_pretrained`` would (``config.json`` and
    ``model.safetensors``), for ``ResNetForImageClassification.from_pretrained``. ``name`` and
    ``options`` select a torchvision-layout ResNet (``resnet18`` ... ``resnet152``, with
    ``widths``, ``stem_width``, ``in_channels``, ``stride_in_1x1``); ``labels`` name the
    classes (``LABEL_i`` otherwise)."""
    state = export_torchvision(name, variables, **options)
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 0
    model = create_model(name, **(options | {"num_classes": num_classes}))
    config = config_for(model, labels)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    write_safetensors(folder / "model.safetensors", from_torchvision(state))
    return folder


def config_for(model: nn.Module, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """transformers' ``ResNetConfig`` (as a dict) for ``model``; a ``ValueError`` naming what
    transformers' ResNet cannot express."""
    if not isinstance(model, ResNet) or model.block not in (BasicBlock, Bottleneck):
        raise ValueError(
            f"transformers' ResNet holds torchvision's basic and bottleneck ResNets; "
            f"{type(model).__name__} with {getattr(model, 'block', None)} is not one."
        )
    layer_type = "basic" if model.block is BasicBlock else "bottleneck"
    plain = dict(stem="imagenet", shortcut="projection", attn_layer=None, norm_layer="batch",
                 groups=1, width_per_group=64, stem_pool="max", aa_layer=None,
                 block_widths=None, block_reduce_first=1, down_kernel_size=1,
                 replace_stride_with_dilation=None)  # fmt: skip
    for field, value in plain.items():
        if getattr(model, field) != value:
            raise ValueError(
                f"transformers' ResNet has no {field}={getattr(model, field)!r} (only {value!r})"
            )
    if (layer_type, tuple(model.stage_sizes)) not in _NAMES:
        raise ValueError(f"transformers' ResNet has no stage sizes {list(model.stage_sizes)}")
    names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(model.num_classes)]
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} labels for {model.num_classes} classes")
    expansion = model.block.expansion
    return {
        "architectures": ["ResNetForImageClassification"],
        "model_type": "resnet",
        "num_channels": model.in_channels,
        "embedding_size": model.stem_width,
        "hidden_sizes": [w * expansion for w in model.widths],
        "depths": list(model.stage_sizes),
        "layer_type": layer_type,
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": bool(model.stride_in_1x1),
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def _num_labels(config: Mapping[str, Any]) -> int:
    if "id2label" in config:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))  # transformers' default


def _local(source: str | os.PathLike, *files: str) -> Path:
    """The first of ``files`` found in the folder ``source``, or fetched from the hub
    repository ``source``; an error naming what is missing."""
    if os.path.isdir(source):
        for file in files:
            if (Path(source) / file).is_file():
                return Path(source) / file
        raise FileNotFoundError(
            f"{os.fspath(source)} has no {' or '.join(files)}: a transformers ResNet folder holds "
            f"config.json and model.safetensors, as save_pretrained writes them."
        )
    first = None
    for file in files:  # the first that the repository has
        try:
            return hub_file(os.fspath(source), file, what=f"{os.fspath(source)} is")
        except WeightsError as error:
            first = first or error
    raise first
