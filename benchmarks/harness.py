"""A small timing harness: warm-up, repeats, median/min/max, peak RSS, and a plain-text table."""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

__all__ = ["Timing", "time_it", "peak_rss_mb", "print_table", "machine_line"]


@dataclass(frozen=True)
class Timing:
    """Repeated wall-clock timings of one callable, in milliseconds."""

    name: str
    times_ms: tuple[float, ...]
    first_ms: float
    rss_mb: float

    @property
    def median(self) -> float:
        """Median over the timed repeats."""
        return statistics.median(self.times_ms)

    @property
    def min(self) -> float:
        """Fastest repeat."""
        return min(self.times_ms)

    @property
    def max(self) -> float:
        """Slowest repeat."""
        return max(self.times_ms)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def time_it(name: str, fn: Callable[[], object], repeat: int = 10, warmup: int = 2) -> Timing:
    """Call `fn` warm-up times (the first one timed as `first_ms`), then `repeat` timed times."""
    gc.collect()
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1000
    for _ in range(max(0, warmup - 1)):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return Timing(name=name, times_ms=tuple(times), first_ms=first, rss_mb=peak_rss_mb())


def print_markdown(table: Sequence[Sequence[str]], file=None) -> None:
    """Print rows of strings (the first is the header) as an aligned Markdown table."""
    out = file or sys.stdout
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |", file=out)
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)


def print_table(rows: Iterable[Timing], title: str = "", baseline: str | None = None,
                extra: Sequence[tuple[str, str]] = (), file=None) -> None:
    """Print timings as an aligned table; with `baseline`, a column of ratios to that row's median."""
    rows = list(rows)
    out = file or sys.stdout
    base = next((r.median for r in rows if r.name == baseline), None)
    if title:
        print(f"\n## {title}", file=out)
    header = ["stage", "median ms", "min ms", "max ms", "first ms", "peak RSS MB"] + (["x baseline"] if base else [])
    table = [header]
    for r in rows:
        line = [r.name, f"{r.median:.2f}", f"{r.min:.2f}", f"{r.max:.2f}", f"{r.first_ms:.2f}", f"{r.rss_mb:.0f}"]
        if base:
            line.append(f"{r.median / base:.3f}")
        table.append(line)
    print_markdown(table, out)
    for key, value in extra:
        print(f"{key}: {value}", file=out)


def machine_line() -> str:
    """One line describing where the numbers came from."""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"Python {platform.python_version()}, {platform.system()}")
