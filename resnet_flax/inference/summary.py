"""A per-layer summary of a model (output shapes, parameter counts), computed abstractly.

Shapes come from ``jax.eval_shape``, so no FLOPs are spent and ``summary("resnet152")`` is
quick. Parameter counts are torchvision's (``sum(p.numel() for p in model.parameters())``);
BatchNorm's running statistics are counted apart, as torchvision's buffers are.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from resnet_flax.models.registry import create_model


def summary(
    name_or_model: str | nn.Module,
    input_shape: tuple[int, ...] = (1, 224, 224, 3),
    *,
    depth: int | None = 1,
    **options: Any,
) -> str:
    """Print and return a table of every module down to ``depth`` (``None``: all of them).

    Each row gives the module's path (indented by nesting), its output shape and its parameter
    count (its submodules' included); the totals follow. ``name_or_model`` is a registered name
    (built with ``options``, e.g. ``num_classes=10``) or a Flax module; ``input_shape`` is NHWC.
    """
    if isinstance(name_or_model, str):
        model = create_model(name_or_model, **options)
    elif options:
        raise ValueError(f"options {sorted(options)} apply to a model name, not to a built module")
    else:
        model = name_or_model
    if depth is not None and depth < 1:
        raise ValueError(f"depth must be at least 1 (or None for every module), got {depth}")

    outputs: dict[tuple[str, ...], str] = {}  # module path -> output shapes, in call order

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if context.method_name == "__call__" and 0 < len(path) <= (depth or len(path)):
            outputs.setdefault(path, _shape(out))
        return out

    def run(x: jax.Array) -> Any:
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x, train=False)

    variables = jax.eval_shape(run, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    params = traverse_util.flatten_dict(variables.get("params", {}))
    stats = traverse_util.flatten_dict(variables.get("batch_stats", {}))

    rows = [("Layer", "Output shape", "Params")]
    for path in _pre_order(list(outputs)):
        count = sum(leaf.size for key, leaf in params.items() if key[: len(path)] == path)
        rows.append(("  " * (len(path) - 1) + path[-1], outputs[path], f"{count:,}"))
    total = sum(leaf.size for leaf in params.values())
    size_mb = sum(leaf.size * leaf.dtype.itemsize for leaf in params.values()) / 2**20
    totals = {
        "Total params": f"{total:,}",
        "batch_stats entries": f"{sum(leaf.size for leaf in stats.values()):,}",
        "Params size (MB)": f"{size_mb:.2f}",
    }
    text = "\n".join(
        [
            f"{type(model).__name__} summary, input {tuple(input_shape)}",
            _table(rows),
            *(f"{label + ':':<21}{value:>15}" for label, value in totals.items()),
        ]
    )
    print(text)
    return text


def _pre_order(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Parents before their children, siblings in call order (a parent's output is recorded
    after its children's)."""
    first_seen: dict[tuple[str, ...], int] = {}
    for i, path in enumerate(paths):
        for n in range(1, len(path) + 1):
            first_seen.setdefault(path[:n], i)
    return sorted(paths, key=lambda p: [first_seen[p[:n]] for n in range(1, len(p) + 1)])


def _shape(output: Any) -> str:
    shapes = [str(tuple(leaf.shape)) for leaf in jax.tree_util.tree_leaves(output)]
    return ", ".join(shapes)


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    rule = "-" * (sum(widths) + 4)
    lines = [
        f"{name:<{widths[0]}}  {shape:<{widths[1]}}  {count:>{widths[2]}}"
        for name, shape, count in rows
    ]
    return "\n".join([rule, lines[0], rule, *lines[1:], rule])
