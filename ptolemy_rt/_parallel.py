"""Threads for array kernels that numpy runs on one core (partitions, masked sums, running sums).

As many threads as OpenCV's own pool (cv2.getNumThreads(): every CPU by default; batch.limit_threads caps it
per worker), so a stage uses the cores the cv2 stages use and no more. numpy releases the GIL inside these
kernels, so the pieces run at once. Callers cut the work into pieces whose results do not depend on how many
threads there are or when each runs (each piece writes its own rows, or sums that are exact in any order), so
the output is the same bits with one thread or many.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["spans", "thread_count", "thread_map"]


def thread_count() -> int:
    """The threads array kernels may use: OpenCV's pool size, at least 1."""
    import cv2

    return max(1, int(cv2.getNumThreads()))


def thread_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """[fn(x) for x in items], the items cut into one contiguous run per thread (default thread_count()), in order.

    One task per thread, not per item: the pool hands out as few tasks as there are threads (a task per 1 MB
    block cost more in hand-offs than it saved on a loaded machine)."""
    todo = list(items)
    n = min(thread_count() if threads is None else max(1, int(threads)), len(todo))
    if n <= 1:
        return [fn(x) for x in todo]
    from concurrent.futures import ThreadPoolExecutor

    runs = [todo[lo:hi] for lo, hi in spans(0, len(todo), n)]
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="ptolemy-rt") as pool:
        done = list(pool.map(lambda run: [fn(x) for x in run], runs))
    return [r for run in done for r in run]


def spans(start: int, stop: int, pieces: int, min_size: int = 1) -> list[tuple[int, int]]:
    """start..stop cut into at most `pieces` contiguous (lo, hi) spans of at least min_size (one if shorter)."""
    total = stop - start
    k = max(1, min(int(pieces), total // max(1, int(min_size))))
    cuts = [start + (total * i) // k for i in range(k + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(k) if cuts[i + 1] > cuts[i]]
