"""Streaming ImageNet-size data through grain: sharded per process, decoded in worker processes.

The pipeline is a grain `MapDataset` all the way to the batches, so batch `k` of a process is
a pure function of (seed, k): resuming at `start_step` slices the batch sequence, and the
output does not depend on the number of workers.

    train: source -> shuffle (reshuffled each epoch) -> repeat forever -> random crop + flip
           (with augment=False: resize + centre crop, as eval)
    eval:  source -> resize + centre crop, padded with masked blanks to whole global batches
    then:  every process_count-th example from process_index -> batch -> [start_step:]

An image that cannot be decoded raises a DataError naming it; with ``skip_bad_images`` a
training example takes the place of the next decodable one in the source (timm's datasets do
the same) and an evaluation example becomes a masked blank, each with a warning that counts
the files this decoding process has skipped.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from .classes import Relabelled, is_identity
from .errors import DataError, decoded
from .images import eval_crop, train_crop
from .registry import dataset_spec
from .request import StreamInfo, StreamSpec
from .splits import parse_split, resolve_slice


def default_num_workers(local_devices: int = 1) -> int:
    """Decoding processes for this host: its cores but one per local device, which stays with
    the trainer (step dispatch and host-to-device copies); at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) - local_devices)


def _let_grain_read_its_flags() -> None:
    """Work around google/grain#1355 (fixed after 0.2.18): with JAX imported, `mp_prefetch`
    reads an absl flag, which raises in programs that never parse absl flags (no absl.app)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


_SKIPPED: set[str] = set()  # in this decoding process
_MAX_CONSECUTIVE = 50  # bad files in a row before giving up: the data set itself is broken


def _decode_or_skip(
    decode: Callable[[dict[str, Any]], np.ndarray],
    record: dict[str, Any],
    source: Any | None,
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """``(decode(record), record)``; an undecodable record raises DataError, or with a
    ``source`` (skipping) gives way to the next decodable one there (None without one)."""
    for _ in range(_MAX_CONSECUTIVE):
        try:
            return decode(record), record
        except DataError as error:
            if source is None:
                raise
            _SKIPPED.add(record["source"])
            warnings.warn(
                f"{error} Skipped ({len(_SKIPPED)} file(s) skipped by this decoding process).",
                stacklevel=2,
            )
            if record.get("index") is None:
                return None
            record = source[(record["index"] + 1) % len(source)]
    raise DataError(f"{_MAX_CONSECUTIVE} undecodable images in a row: check the data set.")


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
    """Decode, random-resized-crop and flip one record (``skip``: the source to take the
    next decodable record from)."""

    image_size: int
    skip: Any = None

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        def crop(r: dict[str, Any]) -> np.ndarray:
            return decoded(train_crop, r["source"], r["image"], self.image_size, rng)

        image, record = _decode_or_skip(crop, record, self.skip)
        return {"image": image, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class CentreCrop(grain.transforms.Map):
    """Decode, resize the shorter side to size*256/224 and centre-crop one record; eval records
    carry ``mask`` (True: a real example). ``skip`` (the source): training takes the next
    decodable record from it; evaluation leaves an undecodable one out (masked)."""

    image_size: int
    masked: bool
    skip: Any = None

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        def crop(r: dict[str, Any]) -> np.ndarray:
            return decoded(eval_crop, r["source"], r["image"], self.image_size)

        if self.masked and self.skip is not None:
            found = _decode_or_skip(crop, record | {"index": None}, self.skip)
            if found is None:
                blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
                return {"image": blank, "label": np.int32(0), "mask": np.False_}
        else:
            found = _decode_or_skip(crop, record, self.skip)
        image, record = found
        out = {"image": image, "label": np.int32(record["label"])}
        if self.masked:
            out["mask"] = np.True_
        return out


@dataclasses.dataclass(frozen=True)
class PaddingRecord(grain.transforms.Map):
    """A blank, masked-out example that fills the last evaluation batch."""

    image_size: int

    def map(self, _: int) -> dict[str, Any]:
        image = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        return {"image": image, "label": np.int32(0), "mask": np.False_}


def _source(
    dataset: str, data_dir: str | None, split: str, class_names: Sequence[str] | None = None
) -> tuple[Any, slice]:
    spec = dataset_spec(dataset)
    if spec.stream is None:
        raise DataError(
            f"{dataset} is held in memory, not streamed: load it with load_arrays "
            "(the data set's DatasetSpec tells which loader it takes)."
        )
    name, bounds = parse_split(split)
    source = spec.stream(data_dir, name)
    if class_names is not None and not is_identity(source.class_names, class_names):
        source = Relabelled(source, class_names, f"{dataset} split {name!r}")
    return source, resolve_slice(bounds, len(source))


def stream_info(
    dataset: str, data_dir: str | None, split: str, class_names: Sequence[str] | None = None
) -> StreamInfo:
    """The number of examples (slices such as 'train[:10%]' included) and the classes of a
    streamed split, labelled by ``class_names`` when given (a DataError if it has others)."""
    source, index = _source(dataset, data_dir, split, class_names)
    names = tuple(source.class_names)
    return StreamInfo(index.stop - index.start, len(names), names)


def _check_arguments(
    image_size: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    start_step: int,
    num_workers: int,
) -> None:
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise DataError(f"process_index {process_index} is not in [0, {process_count}).")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise DataError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}."
        )
    if start_step < 0 or num_workers < 0:
        raise DataError(f"start_step ({start_step}) and num_workers ({num_workers}) must be >= 0.")


def make_stream(
    spec: StreamSpec,
    *,
    train: bool,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"image": uint8 (B, S, S, 3), "label": int32 (B,)} of ``spec``'s split for this
    process, where B = global_batch_size // process_count.

    train=True: endless, reshuffled every epoch, Inception-style random-resized crop + flip
    (``augment=False``: the eval crop instead).
    train=False: one pass in order, the last batch padded; eval batches carry "mask" (bool,
    True for real examples), and across processes every example appears exactly once.
    Batches are the same for the same seed whatever the number of workers; `start_step`
    resumes at that batch exactly. Close the returned iterator (`.close()`) when done with it
    to stop the workers early.
    """
    image_size, seed = spec.image_size, spec.seed
    num_workers = default_num_workers() if spec.num_workers is None else spec.num_workers
    _check_arguments(
        image_size, global_batch_size, process_index, process_count, start_step, num_workers
    )
    source, index = _source(spec.dataset, spec.data_dir, spec.split, spec.class_names)
    ds = grain.MapDataset.source(source)[index]
    skip = source if spec.skip_bad_images else None
    if train:
        ds = ds.seed(seed).shuffle().repeat()
        if spec.augment:
            ds = ds.random_map(RandomCrop(image_size, skip))
        else:
            ds = ds.map(CentreCrop(image_size, masked=False, skip=skip))
    else:
        padding = -len(ds) % global_batch_size
        ds = ds.map(CentreCrop(image_size, masked=True, skip=skip))
        if padding:
            blanks = grain.MapDataset.range(padding).map(PaddingRecord(image_size))
            ds = grain.MapDataset.concatenate([ds, blanks])
    local_batch_size = global_batch_size // process_count
    ds = ds[process_index::process_count].batch(local_batch_size, drop_remainder=True)
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    batches = ds[start_step:].to_iter_dataset(read)
    if num_workers:
        _let_grain_read_its_flags()
        options = grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)
        batches = batches.mp_prefetch(options)
    return _closing(iter(batches))


def _closing(batches: grain.DatasetIterator) -> Iterator[dict[str, np.ndarray]]:
    """The batches as they come (no copy: a batch's shared memory is freed when it is
    dropped, one or two steps later); closing this generator stops the workers."""
    try:
        yield from batches
    finally:
        batches.close()
