"""Shared helpers for the benchmarks: timing, percentiles, a demo-fleet data set.

Benchmarks print figures and ratios against a baseline measured in the same run (the machine is
shared and noisy; a single absolute time means little). They are not tests: nothing here fails.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # runnable as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from backend.demo.fleet import FleetOptions, generate_backfill  # noqa: E402
from backend.models import Stream  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


async def timed(fn: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


def timed_sync(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def demo_batches(
    lines: int, span_s: float, end_ns: int, agents: int = 7, seed: int = 7
) -> Iterator[list[Stream]]:
    """About `lines` demo-fleet lines spread over `span_s` seconds ending at `end_ns`, in push
    batches. The fleet's rate is set from the wanted line count (runs average ~14 lines; ask for
    more and cut, so the count is exact)."""
    rate = lines / 10 / agents / (span_s / 60)
    opts = FleetOptions(agents=agents, rate=rate, backfill_s=span_s, seed=seed, batch_size=1000)
    n = 0
    for batch in generate_backfill(opts, end_ns):
        size = sum(len(s.entries) for s in batch)
        if n + size > lines:
            keep = lines - n
            trimmed = []
            for s in batch:
                if keep <= 0:
                    break
                trimmed.append(Stream(s.labels, s.entries[:keep]))
                keep -= len(trimmed[-1].entries)
            if trimmed:
                yield trimmed
            return
        n += size
        yield batch


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
