"""torchvision <-> Flax weights: import a state_dict, export one back.

The whole conversion is this table, because module names mirror torchvision's:

=========================  ==========================================  =====================
torchvision key            Flax variable                               array
=========================  ==========================================  =====================
``a.0.conv1.weight``       ``params/a_0/conv1/kernel``                 OIHW -> HWIO
``fc.weight``              ``params/fc/kernel``                        (out, in) -> (in, out)
``*.bias``                 ``params/*/bias``                           as is
``bn1.weight``             ``params/bn1/scale``                        as is
``bn1.running_mean``       ``batch_stats/bn1/mean``                    as is
``bn1.running_var``        ``batch_stats/bn1/var``                     as is
``bn1.num_batches_tracked`` ``batch_stats/bn1/num_batches_tracked``    int64 <-> int32
``norm1.v``, ``norm1.tau`` ``params/norm1/v``, ``params/norm1/tau``    as is (EvoNorm, FRN)
=========================  ==========================================  =====================

VGG's first classifier layer needs no reordering: the model flattens in torch's NCHW order.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_flax.io.pth import read_state_dict, write_pth, write_safetensors
from resnet_flax.models.registry import create_model, init_variables, list_models

Variables = dict[str, Any]

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("params", "v"): "v",  # EvoNorm-S0's activation weight
    ("params", "tau"): "tau",  # FilterResponseNorm's TLU threshold
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    ("batch_stats", "num_batches_tracked"): "num_batches_tracked",
}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
    """The torchvision state_dict key of a Flax variable (``layer1_0`` -> ``layer1.0``)."""
    *modules, leaf = path
    return ".".join([*map(_torch_name, modules), _LEAF_TO_TORCH[(collection, leaf)]])


def _torch_name(module: str) -> str:
    """A Flax submodule's torch name: ``layer1_0`` -> ``layer1.0``."""
    return re.sub(r"_(\d+)$", r".\1", module)


def _to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if leaf == "kernel" and array.ndim in (2, 3):
        return array.T  # linear (out, in) <-> (in, out); conv1d (out, in, k) <-> (k, in, out)
    return array


def _to_torch(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if leaf == "kernel" and array.ndim in (2, 3):
        return array.T  # linear (out, in) <-> (in, out); conv1d (out, in, k) <-> (k, in, out)
    return array


def load_torchvision(
    name: str,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    use_ema: bool = True,
    **options: Any,
) -> tuple[nn.Module, Variables]:
    """Build ``name`` and load torchvision weights into it.

    ``source`` is a ``.pth``/``.pt`` file (read without torch, no code run), a ``.safetensors``
    file (torchvision's or timm's ResNet key names), or a mapping of arrays or tensors.
    ``num_classes`` defaults to the file's; asking for a different one re-initialises the
    head (``seed`` option, default 0) and warns. A training checkpoint holding timm's EMA
    weights next to the others loads the EMA ones unless ``use_ema=False``, and warns which.
    Returns ``(model, variables)``.
    """
    where = "state_dict mapping" if isinstance(source, Mapping) else str(source)
    seed = options.pop("seed", 0)
    probe = create_model(name, **options)  # bad options fail before the file is read
    state = read_state_dict(source, use_ema=use_ema)
    head = probe.head
    head_weight = next((v for k, v in state.items() if _is_head_kernel(k.split("."), head)), None)
    file_classes = None if head_weight is None else int(np.shape(head_weight)[0])
    new_head = False
    if "num_classes" not in options and file_classes is not None:
        options["num_classes"] = file_classes
    elif file_classes is not None and options["num_classes"] != file_classes:
        new_head = True
        warnings.warn(
            f"{name}: the weights have {file_classes} classes, "
            f"num_classes={options['num_classes']} was asked for: the head '{head}' is "
            f"re-initialised (seed {seed}).",
            stacklevel=2,
        )
    model = create_model(name, **options)

    expected = traverse_util.flatten_dict(init_variables(model, abstract=True))
    state = _without_common_prefix(state, {torch_key(c, tuple(p)) for c, *p in expected}, where)
    fresh = traverse_util.flatten_dict(init_variables(model, seed=seed)) if new_head else None
    flat, used, missing, misfits, not_float = {}, set(), [], [], []
    for (collection, *path), spec in expected.items():
        key = torch_key(collection, tuple(path))
        if new_head and path[0] == head:
            flat[(collection, *path)] = fresh[(collection, *path)]
            used.add(key)
            continue
        if key not in state:
            missing.append(f"{key!r} (expected shape {_torch_shape(spec.shape, path)})")
            continue
        used.add(key)
        raw = np.asarray(state[key])
        if jnp.issubdtype(spec.dtype, jnp.floating) and not jnp.issubdtype(raw.dtype, jnp.floating):
            not_float.append(f"{key!r} is {raw.dtype}")
            continue
        array = _to_flax(raw, path[-1])
        if array.shape != spec.shape:
            misfits.append(
                f"key {key!r} has shape {tuple(raw.shape)}, the model expects "
                f"{_torch_shape(spec.shape, path)}"
            )
            continue
        flat[(collection, *path)] = jnp.asarray(array, spec.dtype)
    if not_float:
        raise ValueError(
            f"{where}: {len(not_float)} floating-point parameters of {name} are not floating "
            f"in the file ({_listed(not_float, 5)}): integer or quantized weights would load as "
            f"whole numbers. Export float weights (torch: model.float().state_dict())."
        )
    unexpected = [
        f"{k!r} with shape {tuple(np.shape(state[k]))}" for k in sorted(set(state) - used)
    ]
    if missing or misfits or unexpected:
        parts = [
            f"{len(found)} {kind}:{_INDENT}{_listed(found, 20, _INDENT)}"
            for kind, found in (
                ("with another shape", misfits),
                ("missing keys", missing),
                ("unexpected keys", unexpected),
            )
            if found
        ]
        raise ValueError(
            f"the weights do not fit {name} (options {options}){_looks_like(state, name)}: "
            + "\n".join(parts)
            + "\n"
            "Check the model name and options (e.g. num_classes, groups, width_per_group)."
        )
    return model, traverse_util.unflatten_dict(flat)


_INDENT = "\n  "


def _is_head_kernel(path: Sequence[str], head: str) -> bool:
    """Whether ``path`` is the classifier's kernel: a Flax variable's (``params/fc/kernel``,
    ResNetV2's ``params/head/fc/kernel``) or a torch key split at its dots (``fc.weight``,
    ``head.fc.weight``, VGG's ``classifier.6.weight``)."""
    if path[0] == "params":
        return path[1] == head and path[-1] == "kernel"
    return ".".join(path).startswith(_torch_name(head) + ".") and path[-1] == "weight"


# (a key only the family's files have, what the family is, whether a model is of it)
_FAMILIES = (
    (
        "conv1.6.weight",
        "a ResNet with a deep stem (timm's c, s, d and t variants)",
        lambda model: getattr(model, "stem", None) in ("deep", "deep_tiered"),
    ),
    (
        "stages.0.blocks.0.conv1.weight",
        "timm's ResNetV2 (pre-activation; BiT with GroupNorm and standardised convs)",
        lambda model: type(model).__name__ == "ResNetV2",
    ),
)


def _looks_like(state: dict[str, Any], name: str) -> str:
    """What a file whose keys do not fit ``name`` looks like, when a key tells its family:
    the family, and the name whose keys all fit, if one does (only the names with the file's
    blocks per stage are built to compare)."""
    for key, family, member in _FAMILIES:
        if key not in state:
            continue
        names = [n for n in list_models() if member(create_model(n))]
        blocks = _blocks_per_stage(state)
        for candidate in names:
            if candidate == name or tuple(create_model(candidate).stage_sizes) != blocks:
                continue
            model = create_model(candidate)
            expected = traverse_util.flatten_dict(init_variables(model, abstract=True))
            shapes = {  # the head aside: a file may have any number of classes
                torch_key(c, tuple(p)): _torch_shape(v.shape, p)
                for (c, *p), v in expected.items()
                if p[0] != model.head
            }
            if (
                set(shapes) <= set(state)
                and len(state) == len(expected)
                and all(tuple(np.shape(state[k])) == shape for k, shape in shapes.items())
            ):
                return f": they are {family}: try {candidate}"
        return f": they look like {family}: {_listed(names, 12)}"
    return ""


def _blocks_per_stage(state: dict[str, Any]) -> tuple[int, ...]:
    """How many blocks each stage of a torchvision- or timm-layout state has."""
    blocks: dict[int, int] = {}
    for key in state:
        m = re.match(r"^(?:layer(\d+)|stages\.(\d+)\.blocks)\.(\d+)\.", key)
        if m:
            stage = int(m.group(1) or int(m.group(2)) + 1)
            blocks[stage] = max(blocks.get(stage, 0), int(m.group(3)) + 1)
    return tuple(blocks[s] for s in sorted(blocks))


def _listed(items: list[str], limit: int, separator: str = ", ") -> str:
    more = f"{separator}... {len(items) - limit} more" if len(items) > limit else ""
    return separator.join(items[:limit]) + more


def _without_common_prefix(state: dict[str, Any], expected: set[str], where: str) -> dict:
    """``state`` without the prefix every key carries (Lightning's ``model.``, DDP's
    ``module.``, ``backbone.``), where stripping it makes more keys fit; a warning says so."""
    best, stripped, prefix, keys = state, "", "", list(state)
    while keys and all("." in key for key in keys):  # DDP over Lightning: 'module.model.'
        heads = {key.split(".", 1)[0] for key in keys}
        if len(heads) != 1:
            break
        prefix += heads.pop() + "."
        keys = [key[len(prefix) :] for key in state]
        if len(expected.intersection(keys)) > len(expected.intersection(best)):
            best = {key[len(prefix) :]: value for key, value in state.items()}
            stripped = prefix
    state = best
    if stripped:
        warnings.warn(
            f"{where}: every key starts with {stripped!r} (a wrapper's prefix: Lightning's "
            f"'model.', DDP's 'module.', a 'backbone.'); loading the keys without it.",
            stacklevel=3,
        )
    return state


def export_torchvision(name: str, variables: Variables, **options: Any) -> dict[str, np.ndarray]:
    """A torchvision ``state_dict`` (numpy arrays) that ``load_state_dict(strict=True)`` takes.

    ``name`` and ``options`` select the architecture, checked against the variables' shapes.
    """
    flat = traverse_util.flatten_dict(variables)
    model = create_model(name, **options)
    if "num_classes" not in options:
        head_kernel = next((v for k, v in flat.items() if _is_head_kernel(k, model.head)), None)
        if head_kernel is not None:
            model = create_model(name, **(options | {"num_classes": head_kernel.shape[-1]}))
    expected = traverse_util.flatten_dict(init_variables(model, abstract=True))
    missing = [k for k in expected if k not in flat]
    extra = [k for k in flat if k not in expected and k[0] in ("params", "batch_stats")]
    if missing or extra:
        raise ValueError(
            f"variables do not match {name}: missing {['/'.join(k) for k in missing[:5]]}, "
            f"unexpected {['/'.join(k) for k in extra[:5]]}"
        )
    out = {}
    for (collection, *path), spec in expected.items():
        array = np.asarray(jax.device_get(flat[(collection, *path)]))
        if array.shape != spec.shape:
            raise ValueError(
                f"{'/'.join([collection, *path])} has shape {array.shape}, {name} expects "
                f"{spec.shape}"
            )
        if path[-1] == "num_batches_tracked":
            array = array.astype(np.int64)
        else:
            array = array.astype(np.float32)
        out[torch_key(collection, tuple(path))] = _to_torch(array, path[-1]).copy(order="C")
    return out


def save_torchvision(
    path: str | os.PathLike, name: str, variables: Variables, **options: Any
) -> None:
    """Write the exported ``state_dict`` to ``.pth`` (torch.load-able) or ``.safetensors``."""
    state = export_torchvision(name, variables, **options)
    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    if suffix == "safetensors":
        write_safetensors(path, state)
    elif suffix in ("pth", "pt"):
        write_pth(path, state)
    else:
        raise ValueError(f"cannot tell the format of {os.fspath(path)!r}: use .pth or .safetensors")


def _torch_shape(flax_shape: tuple[int, ...], path: list[str]) -> tuple[int, ...]:
    return tuple(_to_torch(np.empty(flax_shape, np.uint8), path[-1]).shape)
