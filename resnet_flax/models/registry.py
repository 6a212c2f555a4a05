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
from resnet_flax.models.pruned import ECARESNET50D_PRUNED, ECARESNET101D_PRUNED
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
_V2_D = dict(stem="deep", avg_down=True)  # ResNetV2's d: deep stem, average-pool shortcuts

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

# timm's ResNet family, architecture-exact (timm.create_model(name) has the same keys): timm's
# letters are stems and shortcuts (c: deep stem; s: deep stem, 64 wide; d: deep stem and
# average-pool shortcuts; t: tiered deep stem and average-pool shortcuts).
_C = dict(stem="deep", stem_width=32)
_S = dict(stem="deep", stem_width=64)
_T = dict(stem="deep_tiered", stem_width=32, shortcut="avg_pool")
_BASIC = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_BOTTLENECK = {
    14: (1, 1, 1, 1), 26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
    152: (3, 8, 36, 3), 200: (3, 24, 36, 3), 269: (3, 30, 48, 8),
}  # fmt: skip
_RS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
       270: (4, 29, 53, 4), 350: (4, 36, 72, 4), 420: (4, 44, 87, 4)}  # fmt: skip


def _resnet(depth: int, **fixed: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """timm's ResNet of ``depth`` (10 is a one-block-per-stage basic net)."""
    if depth in _BASIC or depth == 10:
        return ResNet, dict(block=BasicBlock, stage_sizes=_BASIC.get(depth, (1, 1, 1, 1)), **fixed)
    return ResNet, dict(block=Bottleneck, stage_sizes=_BOTTLENECK[depth], **fixed)


def _x(groups: int, width: int) -> dict[str, int]:
    return dict(groups=groups, width_per_group=width)


_SE, _ECA = dict(attn_layer="se"), dict(attn_layer="eca")
_AA, _BLUR = dict(aa_layer="avg"), dict(aa_layer="blur")

_TIMM: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "resnet10t": _resnet(10, **_T),
    "resnet14t": _resnet(14, **_T),
    "resnet26": _resnet(26),
    "resnet26t": _resnet(26, **_T),
    **{f"resnet{d}d": _resnet(d, **_RESNET_D) for d in (18, 26, 34, 50, 101, 152, 200)},
    **{f"resnet{d}{v}": _resnet(d, **k) for d in (50, 101, 152) for v, k in (("c", _C), ("s", _S))},
    "resnet50t": _resnet(50, **_T),
    "resnet200": _resnet(200),
    "resnet50_gn": _resnet(50, norm_layer="group"),
    "resnext50d_32x4d": _resnet(50, **_x(32, 4), **_RESNET_D),
    **{f"resnext101_32x{w}d": _resnet(101, **_x(32, w)) for w in (4, 16, 32)},
    "ecaresnet26t": _resnet(26, **_T, **_ECA),
    "ecaresnet50d": _resnet(50, **_RESNET_D, **_ECA),
    "ecaresnet50d_pruned": _resnet(50, **_RESNET_D, **_ECA, block_widths=ECARESNET50D_PRUNED),
    "ecaresnet50t": _resnet(50, **_T, **_ECA),
    "ecaresnetlight": (
        ResNet,
        dict(block=Bottleneck, stage_sizes=(1, 1, 11, 3), shortcut="avg_pool", **_ECA),
    ),
    "ecaresnet101d": _resnet(101, **_RESNET_D, **_ECA),
    "ecaresnet101d_pruned": _resnet(101, **_RESNET_D, **_ECA, block_widths=ECARESNET101D_PRUNED),
    "ecaresnet200d": _resnet(200, **_RESNET_D, **_ECA),
    "ecaresnet269d": _resnet(269, **_RESNET_D, **_ECA),
    "ecaresnext26t_32x4d": _resnet(26, **_x(32, 4), **_T, **_ECA),
    "ecaresnext50t_32x4d": _resnet(50, **_x(32, 4), **_T, **_ECA),
    **{f"seresnet{d}": _resnet(d, **_SE) for d in (18, 34, 50, 101, 152)},
    "seresnet50t": _resnet(50, **_T, **_SE),
    **{f"seresnet{d}d": _resnet(d, **_RESNET_D, **_SE) for d in (152, 200, 269)},
    "seresnext26d_32x4d": _resnet(26, **_x(32, 4), **_RESNET_D, **_SE),
    "seresnext26t_32x4d": _resnet(26, **_x(32, 4), **_T, **_SE),
    "seresnext50_32x4d": _resnet(50, **_x(32, 4), **_SE),
    "seresnext101_32x4d": _resnet(101, **_x(32, 4), **_SE),
    "seresnext101_32x8d": _resnet(101, **_x(32, 8), **_SE),
    "seresnext101d_32x8d": _resnet(101, **_x(32, 8), **_RESNET_D, **_SE),
    "seresnext101_64x4d": _resnet(101, **_x(64, 4), **_SE),
    "senet154": _resnet(152, **_x(64, 4), **_S, **_SE, down_kernel_size=3, block_reduce_first=2),
    "resnetblur18": _resnet(18, **_BLUR),
    "resnetblur50": _resnet(50, **_BLUR),
    "resnetblur50d": _resnet(50, **_RESNET_D, **_BLUR),
    "resnetblur101d": _resnet(101, **_RESNET_D, **_BLUR),
    "resnetaa34d": _resnet(34, **_RESNET_D, **_AA),
    "resnetaa50": _resnet(50, **_AA),
    "resnetaa50d": _resnet(50, **_RESNET_D, **_AA),
    "resnetaa101d": _resnet(101, **_RESNET_D, **_AA),
    "seresnetaa50d": _resnet(50, **_RESNET_D, **_AA, **_SE),
    "seresnextaa101d_32x8d": _resnet(101, **_x(32, 8), **_RESNET_D, **_AA, **_SE),
    "seresnextaa201d_32x8d": (
        ResNet,
        dict(
            block=Bottleneck,
            stage_sizes=(3, 24, 36, 4),
            **_x(32, 8),
            **(_RESNET_D | _S),
            **_AA,
            **_SE,
        ),
    ),  # fmt: skip
    **{
        f"resnetrs{d}": (ResNet, dict(block=Bottleneck, stage_sizes=stages, **_RESNET_RS))
        for d, stages in _RS.items()
    },
    # timm's ResNetV2 (pre-activation, its own layout): BatchNorm, and BiT
    **{
        f"resnetv2_{d}{v}": (
            ResNetV2,
            dict(
                block="basic",
                stage_sizes=stages,
                widths=(64, 128, 256, 512),
                norm_layer="batch",
                **k,
            ),
        )  # fmt: skip
        for d, stages in _BASIC.items()
        for v, k in (("", {}), ("d", _V2_D))
    },
    **{
        f"resnetv2_{d}{v}": (ResNetV2, dict(stage_sizes=_BOTTLENECK[d], norm_layer="batch", **k))
        for d in (50, 101, 152)
        for v, k in (("", {}), ("d", _V2_D))
    },
    "resnetv2_50t": (
        ResNetV2,
        dict(stage_sizes=(3, 4, 6, 3), norm_layer="batch", stem="deep_tiered", avg_down=True),
    ),
    **{
        f"resnetv2_50d_{v}": (ResNetV2, dict(stage_sizes=(3, 4, 6, 3), norm_layer=n, **_V2_D))
        for v, n in (("gn", "group"), ("evos", "evonorm"), ("frn", "frn"))
    },
    **{
        f"resnetv2_{d}x{w}_bit": (
            ResNetV2,
            dict(stage_sizes=_BOTTLENECK[d], width_factor=w, **_BIT),
        )
        for d, w in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
    },
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
