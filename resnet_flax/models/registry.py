"""The registry: every model by name, built by one generic builder per family.

A new depth or width is one line in ``_REGISTRY``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_flax.models.checks import check_model_options, did_you_mean
from resnet_flax.models.lenet import LeNet5
from resnet_flax.models.resnet import (
    BasicBlock,
    Bottleneck,
    PreActBasicBlock,
    PreActBottleneck,
    ResNet,
)
from resnet_flax.models.resnetv2 import ResNetV2
from resnet_flax.models.vgg import CFGS, VGG

_CIFAR = dict(stem="cifar", widths=(16, 32, 64), stem_width=16, shortcut="zero_pad", num_classes=10)
_CIFAR_STEM = dict(stem="cifar", num_classes=10)
_RESNET_D = dict(stem="deep", stem_width=32, shortcut="avg_pool")  # deep stem, avg_down
_RESNET_RS = dict(_RESNET_D, stem_pool="conv", attn_layer="se", se_ratio=0.25)
_BIT = dict(stem_pool="fixed", norm_layer="group", standardize=1e-8)  # GroupNorm + StdConv

# name -> (module class, fixed architecture arguments). Options a user may pass are the
# module's remaining fields (see ``model_options``).
_REGISTRY: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    # torchvision, architecture-exact
    "resnet18": (ResNet, dict(block=BasicBlock, stage_sizes=(2, 2, 2, 2))),
    "resnet34": (ResNet, dict(block=BasicBlock, stage_sizes=(3, 4, 6, 3))),
    "resnet50": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3))),
    "resnet101": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 23, 3))),
    "resnet152": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 8, 36, 3))),
    "resnext50_32x4d": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), groups=32, width_per_group=4),
    ),
    "resnext101_32x8d": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 23, 3), groups=32, width_per_group=8),
    ),
    "resnext101_64x4d": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 23, 3), groups=64, width_per_group=4),
    ),
    "wide_resnet50_2": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), width_per_group=128),
    ),
    "wide_resnet101_2": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 23, 3), width_per_group=128),
    ),
    **{
        f"vgg{depth}{'_bn' if bn else ''}": (VGG, dict(cfg=tuple(CFGS[cfg]), batch_norm=bn))
        for depth, cfg in ((11, "A"), (13, "B"), (16, "D"), (19, "E"))
        for bn in (False, True)
    },
    # CIFAR ResNets of He et al. 2016, section 4.2: 6n+2 layers, option-A shortcuts
    **{
        f"resnet{6 * n + 2}": (ResNet, dict(block=BasicBlock, stage_sizes=(n, n, n), **_CIFAR))
        for n in (3, 5, 7, 9, 18, 200)
    },
    # Pre-activation ResNets (He et al., "Identity Mappings in Deep Residual Networks")
    "preact_resnet18": (ResNet, dict(block=PreActBasicBlock, stage_sizes=(2, 2, 2, 2))),
    "preact_resnet34": (ResNet, dict(block=PreActBasicBlock, stage_sizes=(3, 4, 6, 3))),
    "preact_resnet50": (ResNet, dict(block=PreActBottleneck, stage_sizes=(3, 4, 6, 3))),
    "preact_resnet101": (ResNet, dict(block=PreActBottleneck, stage_sizes=(3, 4, 23, 3))),
    "preact_resnet152": (ResNet, dict(block=PreActBottleneck, stage_sizes=(3, 8, 36, 3))),
    # The ImageNet family with a CIFAR stem (3x3/1 conv, no max-pool)
    "resnet18_cifar": (ResNet, dict(block=BasicBlock, stage_sizes=(2, 2, 2, 2), **_CIFAR_STEM)),
    "resnet34_cifar": (ResNet, dict(block=BasicBlock, stage_sizes=(3, 4, 6, 3), **_CIFAR_STEM)),
    "resnet50_cifar": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), **_CIFAR_STEM)),
    "preact_resnet18_cifar": (
        ResNet,
        dict(block=PreActBasicBlock, stage_sizes=(2, 2, 2, 2), **_CIFAR_STEM),
    ),
    "lenet5": (LeNet5, {}),
}

# timm's ResNet family, architecture-exact (timm.create_model(name) has the same keys)
_TIMM: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "resnet26": (ResNet, dict(block=Bottleneck, stage_sizes=(2, 2, 2, 2))),
    **{
        f"resnet{depth}d": (ResNet, dict(block=block, stage_sizes=stages, **_RESNET_D))
        for depth, block, stages in (
            (18, BasicBlock, (2, 2, 2, 2)),
            (26, Bottleneck, (2, 2, 2, 2)),
            (34, BasicBlock, (3, 4, 6, 3)),
            (50, Bottleneck, (3, 4, 6, 3)),
            (101, Bottleneck, (3, 4, 23, 3)),
            (152, Bottleneck, (3, 8, 36, 3)),
        )
    },
    "seresnet50": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), attn_layer="se")),
    "seresnext50_32x4d": (
        ResNet,
        dict(
            block=Bottleneck,
            stage_sizes=(3, 4, 6, 3),
            groups=32,
            width_per_group=4,
            attn_layer="se",
        ),
    ),
    "seresnext101_32x8d": (
        ResNet,
        dict(
            block=Bottleneck,
            stage_sizes=(3, 4, 23, 3),
            groups=32,
            width_per_group=8,
            attn_layer="se",
        ),
    ),
    "ecaresnet50d": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), attn_layer="eca", **_RESNET_D),
    ),
    "resnetrs50": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), **_RESNET_RS)),
    "resnetrs101": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 23, 3), **_RESNET_RS)),
    "resnet50_gn": (ResNet, dict(block=Bottleneck, stage_sizes=(3, 4, 6, 3), norm_layer="group")),
    "ecaresnet101d": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(3, 4, 23, 3), attn_layer="eca", **_RESNET_D),
    ),
    # timm's ResNetV2 (pre-activation, its own layout): BatchNorm, and BiT
    "resnetv2_50": (ResNetV2, dict(stage_sizes=(3, 4, 6, 3), norm_layer="batch")),
    "resnetv2_101": (ResNetV2, dict(stage_sizes=(3, 4, 23, 3), norm_layer="batch")),
    "resnetv2_50x1_bit": (ResNetV2, dict(stage_sizes=(3, 4, 6, 3), **_BIT)),
    "resnetv2_101x1_bit": (ResNetV2, dict(stage_sizes=(3, 4, 23, 3), **_BIT)),
}


# timm's zero_init_last is torchvision's zero_init_residual: timm's default (True for its
# ResNets, False for ResNetV2) on timm's names.
_REGISTRY |= {
    name: (cls, fixed | {"zero_init_residual": cls is ResNet})
    for name, (cls, fixed) in _TIMM.items()
}

# The names whose architecture is timm's own (tests/test_parity.py compares them with timm).
TIMM_MODELS: tuple[str, ...] = tuple(_TIMM)


def list_models() -> list[str]:
    """All registered model names, in registry order."""
    return list(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """The options ``create_model(name, ...)`` accepts, with their defaults."""
    cls, fixed = _lookup(name)
    return {
        f.name: _default(f)
        for f in dataclasses.fields(cls)
        if f.init and f.name not in fixed and f.name not in ("parent", "name")
    } | {k: v for k, v in fixed.items() if k in _OVERRIDABLE}


def create_model(name: str, **options: Any) -> nn.Module:
    """The named model, a Flax module, with torchvision-style options (e.g. ``num_classes=10``;
    ``impl`` picks its kernels, plain XLA by default). Initialise it with ``model.init`` or
    :func:`init_variables`; for published weights use ``resnet_flax.load_pretrained``.

    Raises ``ValueError`` naming an unknown model or option and suggesting close matches.
    """
    cls, fixed = _lookup(name)
    allowed = model_options(name)
    if "weights" in options:
        raise ValueError(
            f"create_model builds the module only; published weights come with "
            f"resnet_flax.load_pretrained({name!r}, {options['weights']!r}), which returns "
            f"(model, variables)."
        )
    for key in options:
        if key not in allowed:
            raise ValueError(
                f"unknown option {key!r} for model {name!r}.{did_you_mean(key, allowed)} "
                f"Options: {', '.join(sorted(allowed))}."
            )
    check_model_options(name, fixed | options, allowed)
    return cls(**(fixed | options))


def init_variables(
    model: nn.Module,
    image_size: int = 32,
    seed: int = 0,
    *,
    abstract: bool = False,
    sharding: jax.sharding.Sharding | None = None,
) -> dict[str, Any]:
    """A model's initial ``{"params": ..., "batch_stats": ...}``, the one way the package makes
    them: initialised on a batch of one ``image_size`` square image, jitted (placed with
    ``sharding``), or only their shapes and dtypes with ``abstract``.

    Keys are XLA RngBitGenerator (``rbg``) keys, whose initialisers compile faster than
    threefry's. A model that cannot take ``image_size`` raises its own ``ValueError``. The
    variables do not depend on the kernels, so initialisation runs the plain ones, which any
    sharding can partition.
    """
    x = jnp.zeros((1, image_size, image_size, getattr(model, "in_channels", 3)), jnp.float32)
    if getattr(model, "impl", "plain") != "plain":
        model = model.clone(impl="plain")

    def init(key: jax.Array) -> dict[str, Any]:
        variables = model.init(key, x, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    key = jax.random.key(seed, impl="rbg")
    if abstract:
        return jax.eval_shape(init, key)
    return jax.jit(init, out_shardings=sharding)(key)


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters (``params`` only, as torch's ``parameters()``)."""
    return sum(a.size for a in jax.tree.leaves(init_variables(model, abstract=True)["params"]))


# Architecture arguments that torchvision also exposes as options (ResNeXt/Wide widths).
_OVERRIDABLE = ("groups", "width_per_group", "num_classes", "zero_init_residual")


def _lookup(name: str) -> tuple[type[nn.Module], dict[str, Any]]:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}.{did_you_mean(name, _REGISTRY)} "
            f"See resnet_flax.list_models() for all {len(_REGISTRY)} names."
        )
    return _REGISTRY[name]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
