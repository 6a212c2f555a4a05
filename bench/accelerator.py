"""``python -m bench.accelerator``: the accelerator proof, one command (fits 8 minutes on a GPU).

1. ResNet-50 bfloat16 train step, images/s, at the largest power-of-two batch that fits
   (from ``--max-batch`` down): ours, the plain Flax example, and PyTorch (channels_last,
   bfloat16 autocast, ``torch.compile``), side by side in interleaved rounds.
2. ResNet-50 eval forward, images/s, the same three.
3. ``resnet18_cifar_fast`` trained on the real CIFAR-10 JPEGs (``--cifar-dir``, the ImageFolder
   copy of CIFAR-10): wall time from the start of the run (compilation and data
   loading included) to the first evaluation at ``--target`` accuracy, and the final accuracy.

Installs nothing: on a machine that has JAX, ``pip install --no-deps -e .``. Writes one JSON
file and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from bench import contestants
from bench.provenance import machine
from bench.timing import interleaved, median


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.accelerator", description=__doc__)
    p.add_argument("--model", default="resnet50", help="resnet50 or resnet18_cifar")
    p.add_argument("--size", type=int, default=224, help="image size of the step figures")
    p.add_argument("--max-batch", type=int, default=1024, help="largest batch to try")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-torch-compile", action="store_true", help="PyTorch eager instead")
    p.add_argument("--cifar-dir", default=None, help="CIFAR-10 ImageFolder (train/ and val/)")
    p.add_argument("--cifar-config", default="resnet18_cifar_fast")
    p.add_argument("--cifar-max-steps", type=int, default=0, help="0: the whole recipe")
    p.add_argument("--cifar-batch-size", type=int, default=0, help="0: the recipe's")
    p.add_argument("--target", type=float, default=0.94, help="accuracy to time")
    p.add_argument("--out", default="bench/accelerator.json")
    return p.parse_args(argv)


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory"))


def largest_batch(args: argparse.Namespace) -> tuple[int, dict[str, contestants.Built]]:
    """The largest power of two <= ``--max-batch`` at which all three contestants build and
    run one train step, and the contestants built at it."""
    batch = 1 << (args.max_batch.bit_length() - 1)
    torch_device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    while batch >= 1:
        print(f"[accelerator] trying batch {batch}", flush=True)
        try:
            built = {
                "ours": contestants.ours(args.model, batch, args.size, dtype=jnp.bfloat16),
                "flax": contestants.flax(args.model, batch, args.size, dtype=jnp.bfloat16),
                "torch": contestants.torch(
                    args.model, batch, args.size, device=torch_device, bf16=True,
                    compile=not args.no_torch_compile,
                ),
            }  # fmt: skip
            for b in built.values():
                b.train()
            return batch, built
        except Exception as error:  # noqa: BLE001 -- JAX's and torch's OOM errors differ
            if not _out_of_memory(error):
                raise
            built = {}
            gc.collect()
            _free_torch_memory()
            batch //= 2
    raise RuntimeError("not even batch 1 fits")


def _free_torch_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    batch, built = largest_batch(args)
    shape = f"{args.model} b{batch} {args.size}px bf16"
    records = []
    for section in ("train", "eval"):
        print(f"[accelerator] {section} {shape}", flush=True)
        times = interleaved({who: getattr(b, section) for who, b in built.items()},
                            args.repeats, args.warmup)  # fmt: skip
        records += [
            {"section": section, "shape": shape, "batch": batch, "contestant": who,
             "img_per_s": batch / median(ts), "seconds": ts}
            for who, ts in times.items()
        ]  # fmt: skip
    return records


def cifar(args: argparse.Namespace) -> dict[str, Any]:
    from train.config import load_config, validate
    from train.loop import train_and_evaluate

    config = load_config(args.cifar_config)
    config.update(dataset="folder", data_dir=str(Path(args.cifar_dir).absolute()),
                  eval_split="val", max_steps=args.cifar_max_steps)  # fmt: skip
    if args.cifar_batch_size:
        config.update(batch_size=args.cifar_batch_size, eval_batch_size=args.cifar_batch_size)
    config = validate(config)
    with tempfile.TemporaryDirectory() as workdir:
        start = time.time()
        result = train_and_evaluate(config, workdir)
        lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    evals = [r for r in map(json.loads, lines) if r["split"] == "eval"]
    reached = next((r for r in evals if r["accuracy"] >= args.target), None)
    return {
        "config": args.cifar_config,
        "steps": result["step"],
        "final_accuracy": evals[-1]["accuracy"] if evals else None,
        "target": args.target,
        "seconds_to_target": None if reached is None else reached["time"] - start,
        "epoch_at_target": None if reached is None else reached["epoch"],
        "seconds_total": time.time() - start,
    }


def table(records: list[dict[str, Any]], run: dict[str, Any] | None) -> str:
    lines = ["| figure | shape | ours | plain Flax | PyTorch | ours / PyTorch | ours / Flax |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for section in ("train", "eval"):
        by = {r["contestant"]: r for r in records if r["section"] == section}
        if not by:
            continue
        ours, flax, torch = (by[w]["img_per_s"] for w in ("ours", "flax", "torch"))
        lines.append(
            f"| {section}, img/s | {by['ours']['shape']} | {ours:,.0f} | {flax:,.0f} | "
            f"{torch:,.0f} | {ours / torch:.2f}x | {ours / flax:.2f}x |"
        )
    if run:
        to_target = run["seconds_to_target"]
        reached = "not reached" if to_target is None else f"{to_target:.1f} s"
        lines.append(
            f"\n{run['config']}: {run['steps']} steps, final val accuracy "
            f"{run['final_accuracy']}, time to {run['target']:.0%}: {reached} "
            f"(whole run {run['seconds_total']:.1f} s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine() | {
        "command": " ".join(["python -m bench.accelerator", *(argv or sys.argv[1:])])
    }
    print(f"[accelerator] {json.dumps(info)}", flush=True)
    start = time.perf_counter()
    records = steps(args)
    run = cifar(args) if args.cifar_dir else None
    out = {"machine": info, "records": records, "cifar": run,
           "wall_s": time.perf_counter() - start}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(table(records, run))
    print(f"[accelerator] wrote {args.out} ({out['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
