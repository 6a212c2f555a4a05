"""Streaming ImageNet-size data through grain: sharded per process, decoded in worker processes.

The pipeline is a grain `MapDataset` all the way to the batches, so batch `k` of a process is
a pure function of (seed, k): resuming at `start_step` slices the batch sequence, and the
output does not depend on the number of workers.

    train: source -> shuffle (reshuffled each epoch) -> repeat forever -> random crop + flip
    eval:  source -> resize + centre crop, padded with masked blanks to whole global batches
    then:  every process_count-th example from process_index -> batch -> [start_step:]
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import grain
import numpy as np
from absl import flags

from .errors import DataError
from .splits import resolve_slice
from .stream_sources import EvalTransform, PaddingRecord, TrainTransform, open_stream_source

DEFAULT_NUM_WORKERS = min(16, os.cpu_count() or 1)


def _let_grain_read_its_flags() -> None:
    """Work around google/grain#1355 (fixed after 0.2.18): with JAX imported, `mp_prefetch`
    reads an absl flag, which raises in programs that never parse absl flags (no absl.app)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _source_dataset(dataset: str, data_dir: str | None, split: str) -> grain.MapDataset:
    source, bounds = open_stream_source(dataset, data_dir, split)
    return grain.MapDataset.source(source)[resolve_slice(bounds, len(source))]


def stream_length(dataset: str, data_dir: str | None, split: str) -> int:
    """Number of examples in a streamed split (slices such as 'train[:10%]' included)."""
    return len(_source_dataset(dataset, data_dir, split))


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
    dataset: str,
    data_dir: str | None,
    split: str,
    image_size: int,
    *,
    train: bool,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    seed: int,
    start_step: int = 0,
    num_workers: int = DEFAULT_NUM_WORKERS,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches {"image": uint8 (B, S, S, 3), "label": int32 (B,)} for this process, where
    B = global_batch_size // process_count.

    train=True: endless, reshuffled every epoch, Inception-style random-resized crop + flip.
    train=False: one pass in order, the last batch padded; eval batches carry "mask" (bool,
    True for real examples), and across processes every example appears exactly once.
    Batches are the same for the same seed whatever `num_workers`; `start_step` resumes at
    that batch exactly. `num_workers` decoding processes (0: decode in this process).
    Close the returned iterator (`.close()`) when done with it to stop the workers early.
    """
    _check_arguments(
        image_size, global_batch_size, process_index, process_count, start_step, num_workers
    )
    ds = _source_dataset(dataset, data_dir, split)
    if train:
        ds = ds.seed(seed).shuffle().repeat().random_map(TrainTransform(image_size))
    else:
        padding = -len(ds) % global_batch_size
        ds = ds.map(EvalTransform(image_size))
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
    return _plain_batches(iter(batches))


def _plain_batches(batches: grain.DatasetIterator) -> Iterator[dict[str, np.ndarray]]:
    """Each batch as ordinary arrays: copied out of the workers' shared memory, which is then
    freed at once rather than whenever the caller drops the batch. Closing this generator
    stops the workers."""
    try:
        for batch in batches:
            yield {key: np.array(value) for key, value in batch.items()}
    finally:
        batches.close()
