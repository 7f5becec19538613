"""Shared helpers: interleaved timing with medians, and what a benchmark module returns.

The benchmark box is a noisy shared machine, so nothing is timed once: every
contender runs once per round, rounds rotate the order, and results are medians.
Ratios are taken within a round (both sides saw the same noise) before the median.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """What a benchmark module's `main()` returns to `benchmarks.run`.

    `ok` is False when the benchmark found something wrong (for instance engines
    disagreeing); `headline` holds a few lines for the run's summary.
    """

    ok: bool
    headline: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contender(Generic[T]):
    """One timed row: `run` makes `count` decisions and returns what it decided."""

    name: str
    run: Callable[[], T]
    count: int


@dataclass
class Timings(Generic[T]):
    """Seconds per pass for each contender, round by round, and the last results."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, T] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def rate(self, name: str) -> float:
        """Median decisions per second."""
        return self.counts[name] / statistics.median(self.seconds[name])

    def micros(self, name: str) -> float:
        """Median microseconds per decision."""
        return statistics.median(self.seconds[name]) / self.counts[name] * 1e6

    def spread(self, name: str) -> float:
        """(slowest - fastest) / median pass, a rough noise indicator."""
        s = self.seconds[name]
        return (max(s) - min(s)) / statistics.median(s)

    def ratio(self, fast: str, slow: str) -> float:
        """Median over rounds of how many times faster `fast` was than `slow`, per decision."""
        per_round = [
            (ts / self.counts[slow]) / (tf / self.counts[fast])
            for tf, ts in zip(self.seconds[fast], self.seconds[slow], strict=True)
        ]
        return statistics.median(per_round)


def time_once(fn: Callable[[], T]) -> tuple[float, T]:
    """Seconds one call of `fn` takes, with the collector paused as `timeit` does."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed, out


def interleave(
    contenders: Sequence[Contender[T]],
    rounds: int,
    on_result: Callable[[str, T], None] | None = None,
    *,
    warmup: bool = True,
) -> Timings[T]:
    """Run every contender once per round, rotating the order, after a warm-up pass each.

    `on_result` sees every pass's result (the warm-up's too), so callers can check
    correctness on exactly what was timed.
    """
    timings: Timings[T] = Timings()
    for c in contenders:
        timings.seconds[c.name] = []
        timings.counts[c.name] = c.count
        if warmup:
            out = c.run()
            if on_result is not None:
                on_result(c.name, out)
    for r in range(rounds):
        k = r % len(contenders)
        for c in (*contenders[k:], *contenders[:k]):
            elapsed, out = time_once(c.run)
            timings.seconds[c.name].append(elapsed)
            timings.results[c.name] = out
            if on_result is not None:
                on_result(c.name, out)
    return timings


def machine() -> Mapping[str, str]:
    """What the numbers were measured on."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpus": str(os.cpu_count()),
        "platform": platform.platform(),
    }


def write_section(results: Path, heading: str, text: str) -> None:
    """Replace the section under `heading` in RESULTS.md with `text` (others own the rest)."""
    old = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    start = old.find(heading)
    if start == -1:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + text + (old[end + 1 :] if end != -1 else "")
    results.write_text(new.rstrip("\n") + "\n", encoding="utf-8")
