"""Classify images with torchvision weights: ``python -m resnet_flax.predict``.

Example::

    python -m resnet_flax.predict --model resnet50 --weights resnet50-11ad3fa6.pth cat.jpg
    python -m resnet_flax.predict --weights resnet50.tv2_in1k cat.jpg  # fetched by tag
    python -m resnet_flax.predict --weights runs/resnet18_cifar cat.png  # a training run

The evaluation transforms follow the weights when their file name is torchvision's
(``resnet50-11ad3fa6.pth`` is V2: resize 232, crop 224), else torchvision's V1 defaults
(resize 256, crop 224); a training run's workdir (or checkpoint directory) brings its model,
classes and evaluation transform from its latest checkpoint. ``--resize``/``--crop`` override
any of them.

Inference runs with BatchNorm folded into the convolutions, on the fastest kernels for the
backend (``--kernels auto``: on a CPU, oneDNN's convolutions with their post-ops); ``--kernels
plain`` runs plain XLA. The numbers agree to float32 round-off.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from tqdm import tqdm

from resnet_flax.inference.fold import fold_batch_norm
from resnet_flax.inference.preprocess import imagenet_classes
from resnet_flax.io import hub, runs
from resnet_flax.io.convert import load_torchvision
from resnet_flax.io.transforms import PRESETS, EvalTransform
from resnet_flax.io.weights import Weights, identify
from resnet_flax.models.layers import impl_names, resolve_impl
from resnet_flax.models.registry import create_model

BATCH_SIZE = 16


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m resnet_flax.predict",
        description="Print the top classes of each image under torchvision weights.",
    )
    parser.add_argument(
        "--model", help="model name, e.g. resnet50 (default: the one the weights file names)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="torchvision weights: a .pth/.pt/.safetensors file, or a tag (resnet50.tv2_in1k, "
        "or IMAGENET1K_V2 with --model), fetched into torch hub's cache; or a training run's "
        "workdir (its latest checkpoint)",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print (5)")
    parser.add_argument("--resize", type=int, help="shorter side before cropping (256, V2: 232)")
    parser.add_argument("--crop", type=int, help="centre crop size (224)")
    parser.add_argument(
        "--crop-pct",
        type=float,
        help="timm's crop fraction: resize the shorter side to floor(crop / crop_pct)",
    )
    parser.add_argument(
        "--interpolation", choices=("nearest", "bilinear", "bicubic"), help="resize filter"
    )
    parser.add_argument(
        "--kernels",
        choices=impl_names(),
        default="auto",
        help="the model's kernels: auto (the fastest for the backend: the CPU kernels on a "
        "CPU), plain (plain XLA) or cpu",
    )
    return parser.parse_args(argv)


def top_classes(
    model: nn.Module, variables: dict, batch: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most probable classes of every image in ``batch``: (probabilities, indices).

    Runs the eval forward with BatchNorm folded into the convolutions (:func:`fold_batch_norm`),
    each oneDNN convolution applying what follows it where the model runs the CPU kernels.
    """
    post_ops = resolve_impl(getattr(model, "impl", "plain")) == "cpu"
    logits = fold_batch_norm(model, variables, batch[:BATCH_SIZE].shape, post_ops=post_ops)
    chunks = range(0, len(batch), BATCH_SIZE)
    probs = np.concatenate(
        [
            np.asarray(jax.nn.softmax(logits(batch[i : i + BATCH_SIZE])))
            for i in tqdm(chunks, desc="classifying", unit="batch", disable=len(chunks) < 2)
        ]
    )
    indices = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(probs, indices, axis=1), indices


def format_predictions(image: str, names: Sequence[str], probs: Sequence[float]) -> str:
    """One image's classes and probabilities (percent), aligned."""
    width = max(len(name) for name in names)
    lines = [
        f"  {rank}. {name:<{width}}  {100 * p:6.2f}%"
        for rank, (name, p) in enumerate(zip(names, probs, strict=True), 1)
    ]
    return "\n".join([image, *lines])


def _resolve(args: argparse.Namespace, info: Weights | None) -> str:
    """The model name, checked against what the weights file name says."""
    if info is None:
        if args.model is None:
            raise ValueError(f"cannot tell the model of {args.weights!r}: pass --model NAME")
        return args.model
    if info.features_only:
        raise ValueError(
            f"{os.path.basename(args.weights)} ({info.tag}) has no trained "
            "classifier: it is for feature extraction only"
        )
    if args.model is not None and args.model != info.model:
        raise ValueError(
            f"{os.path.basename(args.weights)} holds torchvision's {info.model} weights, "
            f"not {args.model}: use --model {info.model}"
        )
    return info.model


def _transform(
    args: argparse.Namespace, info: Weights | None, known: EvalTransform | None = None
) -> EvalTransform:
    """The weights' evaluation transform (``known``: a run's; torchvision's V1 preset for a
    file it cannot identify, with a warning), with the command line's overrides."""
    for flag, value in (("--resize", args.resize), ("--crop", args.crop)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive number of pixels, got {value}")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise ValueError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    if args.crop_pct is not None and args.resize is not None:
        raise ValueError("--crop-pct sets the resize: pass --crop-pct or --resize, not both")
    transform = known or (PRESETS["V1"] if info is None else info.transforms())
    crop = transform.crop_size if args.crop is None else args.crop
    resize = args.resize or (
        math.floor(crop / args.crop_pct) if args.crop_pct else transform.resize_size
    )
    interpolation = args.interpolation or transform.interpolation
    if known is None and info is None and not (args.resize or args.crop_pct or args.interpolation):
        print(
            f"warning: {os.path.basename(args.weights)} is not a file name of a weights table "
            f"entry, so "
            f"its preprocessing is unknown: using torchvision's V1 preset (resize {resize}, "
            f"crop {crop}, {interpolation}). If it was trained otherwise, pass --resize or "
            f"--crop-pct, --crop and --interpolation (timm's weights: e.g. --crop-pct 0.95 "
            f"--interpolation bicubic), or use a tag (--weights resnet50d.a1_in1k).",
            file=sys.stderr,
        )
    return dataclasses.replace(
        transform, resize_size=resize, crop_size=crop, interpolation=interpolation
    )


def _looks_like_a_tag(weights: str) -> bool:
    """``resnet50.tv2_in1k`` or ``IMAGENET1K_V2``, not a path to a file."""
    return os.sep not in weights and not weights.endswith((".pth", ".pt", ".bin", ".safetensors"))


def _classify(
    args: argparse.Namespace, model: nn.Module, variables: dict, batch: np.ndarray,
    classes: Sequence[str],
) -> None:  # fmt: skip
    probs, indices = top_classes(model, variables, batch, min(args.top, model.num_classes))
    for image, p, idx in zip(args.images, probs, indices, strict=True):
        print(format_predictions(image, [classes[i] for i in idx], p))


def _run_from_workdir(args: argparse.Namespace) -> None:
    """Classify with a training run's latest checkpoint: its model, classes and transform."""
    found = runs.read_run(args.weights)
    if args.model is not None and args.model != found.model:
        raise ValueError(f"{args.weights} trained {found.model}, not {args.model}: drop --model")
    transform = _transform(args, None, found.transform)
    print(
        f"{found.model} ({args.weights}, step {found.step}): resize {transform.resize_size}, "
        f"crop {transform.crop_size}, {transform.interpolation}",
        file=sys.stderr,
    )
    batch = transform(args.images)
    model = create_model(found.model, impl=args.kernels, **found.options)
    _classify(args, model, found.variables, batch, found.class_names)


def run(args: argparse.Namespace) -> None:
    """Check the inputs, load the weights, classify and print; bad input raises."""
    if args.top < 1:
        raise ValueError(f"--top must be at least 1, got {args.top}")
    if os.path.isdir(args.weights) and runs.is_run(args.weights):
        _run_from_workdir(args)
        return
    tagged = None
    if not os.path.isfile(args.weights) and _looks_like_a_tag(args.weights):
        tagged = hub.resolve(args.weights, args.model)  # a tag, or an enum name with --model
        args.weights = str(hub.fetch(tagged))
    for path, what in [(args.weights, "weights file"), *((i, "image") for i in args.images)]:
        if os.path.isdir(path):
            raise IsADirectoryError(f"{what} {path!r} is a directory: name the files in it")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} not found: {path!r}")
    info = tagged or identify(args.weights)
    name = _resolve(args, info)
    transform = _transform(args, info)
    where = info.tag if info else "unrecognised weights, V1 defaults"
    print(
        f"{name} ({where}): resize {transform.resize_size}, crop {transform.crop_size}, "
        f"{transform.interpolation}",
        file=sys.stderr,
    )

    batch = transform(args.images)  # unreadable images fail before the weights load
    model, variables = load_torchvision(name, args.weights, impl=args.kernels)
    classes = (
        imagenet_classes()
        if model.num_classes == 1000
        else [f"class {i}" for i in range(model.num_classes)]
    )
    _classify(args, model, variables, batch, classes)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 on bad input, with ``error: ...``)."""
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
