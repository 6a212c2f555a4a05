"""``python -m bench``: this project against its peers, side by side, in one run.

Prints a table and writes a JSON file. Every figure is a median over ``--repeats`` interleaved
rounds after ``--warmup`` rounds; a ratio compares two contestants measured in the same rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from bench import contestants, loader
from bench.provenance import machine
from bench.timing import interleaved, median
from resnet_flax.models.layers import compiler_options
from train.data.augment import augment_cifar

SECTIONS = ("train", "eval", "loader", "stream", "augment")
DEFAULT_SHAPES = "resnet18_cifar:128:32,resnet50:32:224"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"any of {SECTIONS}")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="model:batch:size,... (train, eval)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per figure")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--jpegs", type=int, default=300, help="JPEGs for the loader section")
    p.add_argument("--out", default="bench/results.json", help="where to write the JSON")
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def row(section, shape, unit, per_call, times, items) -> list[dict[str, Any]]:
    """One JSON record per contestant: median items/s and the raw seconds."""
    return [
        {
            "section": section,
            "shape": shape,
            "contestant": name,
            "unit": unit,
            "value": items / median(ts),
            "seconds": ts,
        }
        for name, ts in times.items()
    ] + ([] if per_call is None else per_call)


def bench_models(args, sections) -> list[dict[str, Any]]:
    records = []
    for spec in args.shapes.split(","):
        name, batch, size = spec.split(":")
        batch, size = int(batch), int(size)
        shape = f"{name} b{batch} {size}px"
        print(f"[bench] building {shape}: ours, flax, torch", flush=True)
        built = {who: make(name, batch, size) for who, make in contestants.CONTESTANTS.items()}
        for who, b in built.items():
            if who != "torch":
                records.append(
                    {"section": "compile", "shape": shape, "contestant": who, "unit": "s",
                     "value": b.compile_s}
                )  # fmt: skip
        for section in ("train", "eval"):
            if section not in sections:
                continue
            print(f"[bench] {section} {shape}: {args.repeats} interleaved rounds", flush=True)
            fns = {who: getattr(b, section) for who, b in built.items()}
            times = interleaved(fns, args.repeats, args.warmup)
            records += row(section, shape, "img/s", None, times, batch)
        del built
        gc.collect()
    return records


def bench_loader(args) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = loader.make_jpegs(Path(tmp), args.jpegs)
        print(f"[bench] loader: {len(paths)} JPEGs, one process each", flush=True)
        fns = {"ours": loader.ours(paths), "torch": loader.torchvision_pil(paths)}
        times = interleaved(fns, args.repeats, args.warmup)
    return row("loader", "RRC 224 + flip, JPEG 300-500px", "img/s/process", None, times, len(paths))


STREAM_WORKERS = (1, 2)
GPU_IMAGES_PER_S = 3000  # what one GPU's ResNet-50 training step consumes, roughly


def bench_stream(args) -> list[dict[str, Any]]:
    """The streamed ImageNet-style pipeline (data/stream.py: ImageFolder JPEGs, shuffle, decode,
    random-resized crop + flip at 224, batches of 32) in images/s with 1 and 2 workers."""
    batch, rounds = 32, 4
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        root = loader.make_folder(Path(tmp), args.jpegs)
        for workers in STREAM_WORKERS:
            print(f"[bench] stream: {args.jpegs} JPEGs, {workers} worker(s)", flush=True)
            seconds = loader.stream_seconds(root, workers, batch, rounds, args.repeats, args.warmup)
            records += row("stream", f"folder JPEG 300-500px, RRC 224, b{batch}", "img/s",
                           None, {f"{workers} worker(s)": seconds}, batch * rounds)  # fmt: skip
    return records


def stream_line(records: list[dict[str, Any]]) -> str:
    """What the 1-worker rate (one worker is one core) implies for feeding GPUs."""
    by = {r["contestant"]: r["value"] for r in records if r["section"] == "stream"}
    if not by:
        return ""
    per_core = by["1 worker(s)"]
    rates = ", ".join(f"{who}: {value:,.0f} img/s" for who, value in by.items())
    one, eight = GPU_IMAGES_PER_S / per_core, 8 * GPU_IMAGES_PER_S / per_core
    return (
        f"Streamed pipeline: {rates}. At {per_core:,.0f} img/s per worker core, one GPU "
        f"consuming {GPU_IMAGES_PER_S:,} img/s needs {math.ceil(one)} decoding cores, "
        f"8 of them {math.ceil(eight)}."
    )


def bench_augment(args) -> list[dict[str, Any]]:
    """CIFAR pad-4 crop + flip on the device, against the resnet18_cifar step it feeds."""
    batch = int(args.shapes.split(",")[0].split(":")[1]) if args.shapes else 128
    images = jnp.asarray(contestants.host_batch(batch, 32, 10)["image"])
    augment = jax.jit(augment_cifar, compiler_options=compiler_options("auto"))
    keys = iter(jax.random.split(jax.random.key(0), 10_000))
    step = contestants.ours("resnet18_cifar", batch, 32).train
    fns = {
        "augment": lambda: jax.block_until_ready(augment(next(keys), images)),
        "train_step": step,
    }
    times = interleaved(fns, args.repeats, args.warmup)
    return row("augment", f"resnet18_cifar b{batch} 32px", "img/s", None, times, batch)


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one line per (section, shape), contestants side by side, ratios last."""
    lines = [
        "| figure | shape | ours | PyTorch | plain Flax | ours / PyTorch | ours / plain Flax |",
        "|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for r in records:
        if r["section"] in ("augment", "stream"):
            continue  # reported by augment_line and stream_line
        groups.setdefault((r["section"], r["shape"]), {})[r["contestant"]] = r
    label = {
        "train": "train step, img/s",
        "eval": "eval forward, img/s",
        "compile": "train-step compile, s",
        "loader": "input pipeline, img/s per process",
    }
    for (section, shape), by in groups.items():
        ours, peer_torch, flax = by.get("ours"), by.get("torch"), by.get("flax")
        cells = [f"{x['value']:.1f}" if x else "" for x in (ours, peer_torch, flax)]
        inverse = section == "compile"  # seconds: smaller is better, so peer / ours
        ratios = [_ratio(ours, peer, inverse) for peer in (peer_torch, flax)]
        lines.append(f"| {label[section]} | {shape} | {' | '.join(cells + ratios)} |")
    return "\n".join(lines)


def augment_line(records: list[dict[str, Any]]) -> str:
    """The CIFAR on-device augmentation's share of the train step it feeds."""
    by = {r["contestant"]: r for r in records if r["section"] == "augment"}
    if not by:
        return ""
    aug, step = by["augment"]["value"], by["train_step"]["value"]
    return (
        f"CIFAR pad-4 crop + flip on the device ({by['augment']['shape']}): {aug:,.0f} img/s, "
        f"{100 * step / aug:.2f}% of the time of the train step it feeds ({step:.1f} img/s)."
    )


def round_lines(records: list[dict[str, Any]]) -> list[str]:
    """How the ours / PyTorch ratio spreads over the rounds (each round runs both back to
    back, so a round's ratio sees one machine state): its range and how often ours won."""
    seconds = {(r["section"], r["shape"], r["contestant"]): r.get("seconds") for r in records}
    lines = []
    for (section, shape, who), ours in seconds.items():
        peer = seconds.get((section, shape, "torch"))
        if who != "ours" or not ours or not peer:
            continue
        ratios = sorted(theirs / mine for mine, theirs in zip(ours, peer, strict=True))
        wins = sum(ratio > 1 for ratio in ratios)
        lines.append(
            f"{section} {shape}: ours / PyTorch per round {ratios[0]:.2f}-{ratios[-1]:.2f}x "
            f"(median {median(ratios):.2f}x); ours faster in {wins} of {len(ratios)} rounds"
        )
    return lines


def _ratio(ours: dict | None, peer: dict | None, inverse: bool) -> str:
    if not (ours and peer):
        return ""
    value = peer["value"] / ours["value"] if inverse else ours["value"] / peer["value"]
    return f"{value:.2f}x"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = args.sections.split(",")
    info = machine()
    print(f"[bench] {info['command']}\n[bench] {json.dumps(info)}", flush=True)
    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    if {"train", "eval"} & set(sections):
        records += bench_models(args, sections)
    if "loader" in sections:
        records += bench_loader(args)
    if "stream" in sections:
        records += bench_stream(args)
    if "augment" in sections:
        records += bench_augment(args)
    out = {
        "machine": info,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "wall_s": time.perf_counter() - start,
        "records": records,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(table(records))
    print(augment_line(records))
    print(stream_line(records))
    print("\n".join(round_lines(records)))
    print(f"[bench] wrote {args.out} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
