"""Timing helpers: interleaved rounds and medians, so contestants share the machine's moods."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(
    contestants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each contestant, measured in rounds A, B, C, A, B, C, ...

    Each callable must block until its work is done. ``warmup`` untimed rounds come first.
    Interleaving puts every contestant under the same background load, which on a shared
    2-core machine drifts by 10-30% over minutes.
    """
    for _ in range(warmup):
        for fn in contestants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for round_ in range(repeats):
        for name, fn in contestants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        line = ", ".join(f"{name} {ts[-1]:.3f} s" for name, ts in times.items())
        print(f"[bench]   round {round_ + 1}/{repeats}: {line}", flush=True)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)
