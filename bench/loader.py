"""Input-pipeline contestants: per-example ImageNet-style train transform on real JPEGs.

The JPEGs are made here: CIFAR-10 images from ``../shared`` (or, without them, generated
patterns) upscaled to 300-500 px with noise and saved at quality 90, a few hundred files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from train.data.images import train_crop

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def make_jpegs(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` RGB JPEGs of 300-500 px per side in ``directory`` (reused when present)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = sorted(directory.glob("*.jpg"))
    if len(paths) >= count:
        return paths[:count]
    rng = np.random.default_rng(seed)
    sources = (
        sorted(SHARED_CIFAR.glob("**/*.jpg"))[: count * 10 : 10] if SHARED_CIFAR.is_dir() else []
    )
    paths = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(300, 501, 2))
        if sources:
            base = (
                Image.open(sources[i % len(sources)]).convert("RGB").resize((w, h), Image.BICUBIC)
            )
            pixels = np.asarray(base, np.float32)
        else:
            yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
            phase = rng.uniform(0, 2 * np.pi, 3)
            pixels = 127 + 100 * np.sin(8 * xx[..., None] + 5 * yy[..., None] + phase)
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        path = directory / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def ours(paths: list[Path], size: int = 224) -> Callable[[], None]:
    """The project's per-example train transform (PIL draft decode, RRC, flip)."""
    rng = np.random.default_rng(0)

    def run():
        for path in paths:
            train_crop(str(path), size, rng)

    return run


def torchvision_pil(paths: list[Path], size: int = 224) -> Callable[[], None]:
    """torchvision's ImageFolder loader + RandomResizedCrop + RandomHorizontalFlip, to uint8."""
    import torch
    from torchvision import transforms
    from torchvision.datasets.folder import pil_loader

    torch.manual_seed(0)
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )

    def run():
        for path in paths:
            transform(pil_loader(str(path)))

    return run


def make_folder(directory: Path, count: int) -> Path:
    """An ImageFolder ``train`` split of ``count`` JPEGs (links to :func:`make_jpegs`'s) in 10
    classes; returns its root (the ``data_dir``)."""
    paths = make_jpegs(directory / "jpegs", count)
    root = directory / "folder"
    for i, path in enumerate(paths):
        target = root / "train" / f"class{i % 10}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    return root


def stream_seconds(
    root: Path, workers: int, batch: int, batches: int, repeats: int, warmup: int
) -> list[float]:
    """Seconds per ``batches`` batches of the trainer's streamed train pipeline, ``repeats``
    times after ``warmup`` rounds (which also start the workers)."""
    from train.data import StreamSpec, make_stream

    spec = StreamSpec("folder", str(root), "train", 224, num_workers=workers)
    stream = make_stream(spec, train=True, global_batch_size=batch)
    try:
        seconds = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            for _ in range(batches):
                next(stream)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
        return seconds
    finally:
        stream.close()
