"""The dashboard under load: the app runs headless (`run_test`, 160x48 so all four panes are on
screen) on an embedded store holding an hour of the demo fleet, while 10,000 lines/s are pushed
into it and the live tail follows every run.

    python bench/tui_tail.py [--seconds 30] [--rate 10000] [--size 160x48]

Goals (issue 4): the tail keeps up (no growing backlog), RSS stays bounded, and
keypress-to-render p95 <= 50 ms under the load. Baseline in the same run: the same keypress
measure (j/k moving the runs table's cursor) with no load. "Render" is the moment the app hands
the next frame (the composited screen) to its driver.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import pct
from textual import events

from backend.config import Settings
from backend.demo.fleet import FleetOptions, run_fleet
from backend.facade import Backend
from backend.models import LogEntry, Stream
from tui.app import AgentlogApp

AGENTS = ("planner", "coder", "reviewer", "retriever", "browser", "support", "researcher", "ops")
LEVELS = ("info",) * 8 + ("warn", "error")
BATCH_EVERY = 0.1
KEYS_PER_PHASE = 60


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def batch(seq: itertools.count[int], n: int) -> list[Stream]:
    now = time.time_ns()
    by_stream: dict[tuple[str, str], list[LogEntry]] = {}
    for i in range(n):
        k = next(seq)
        agent, level = AGENTS[k % len(AGENTS)], LEVELS[k % len(LEVELS)]
        run = f"run-{k // 40:012x}"
        line = (
            f'{{"event":"step","run_id":"{run}","msg":"step {k} of the bench",'
            f'"tool":"web_search","args":{{"q":"item {k}"}}}}'
        )
        by_stream.setdefault((agent, level), []).append(LogEntry(now + i, line, {"run_id": run}))
    return [Stream({"agent": a, "level": lv}, es) for (a, lv), es in by_stream.items()]


class FrameClock:
    """Timestamps of the frames the app hands to its driver."""

    def __init__(self, app: AgentlogApp) -> None:
        self.app = app
        self.armed = False
        self.at = 0.0
        self.done = asyncio.Event()
        inner = app._display

        def display(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.armed = False
                self.at = time.perf_counter()
                self.done.set()
            return inner(*args, **kwargs)

        app._display = display  # type: ignore[method-assign]

    async def keypress(self, key: str) -> float:
        """Send a key the way the terminal driver does; seconds until the next frame."""
        self.done = asyncio.Event()
        self.armed = True
        event = events.Key(key, key)
        event.set_sender(self.app)
        t0 = time.perf_counter()
        assert self.app._driver is not None
        self.app._driver.send_message(event)
        await asyncio.wait_for(self.done.wait(), 5)
        return self.at - t0


async def keypresses(frames: FrameClock, n: int) -> list[float]:
    out = []
    for i in range(n):
        out.append(await frames.keypress("k" if i % 2 else "j"))
        await asyncio.sleep(0.05)
    return out


async def main(seconds: float, rate: int, size: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        backend = await Backend.open(settings)
        await run_fleet(backend.push, FleetOptions(agents=8, seed=7, backfill_s=3600))
        app = AgentlogApp(settings, backend=backend)
        pushed = 0
        async with app.run_test(size=size) as pilot:
            frames = FrameClock(app)
            await asyncio.wait_for(app.dashboard.loaded.wait(), 10)
            await pilot.pause(0.5)
            tail = app.dashboard.tail

            idle = await keypresses(frames, KEYS_PER_PHASE)
            received0 = tail.received

            seq = itertools.count()
            per = int(rate * BATCH_EVERY)
            samples: list[tuple[float, int, int, int, float]] = []
            stop = False

            async def producer() -> None:
                nonlocal pushed
                next_at = time.perf_counter()
                while not stop:
                    # made off the UI loop, as an agent elsewhere would make them
                    streams = await asyncio.to_thread(batch, seq, per)
                    await backend.push(streams)
                    pushed += per
                    next_at += BATCH_EVERY
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

            async def sampler() -> None:
                t0 = time.perf_counter()
                while not stop:
                    await asyncio.sleep(1.0)
                    got = tail.received - received0
                    samples.append((time.perf_counter() - t0, pushed, got, tail.backlog, rss_mb()))

            rss0 = rss_mb()
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(producer()), asyncio.create_task(sampler())]
            await asyncio.sleep(min(3.0, seconds / 3))  # let the load settle
            loaded: list[float] = []
            while time.perf_counter() - t0 < seconds:
                loaded += await keypresses(frames, 10)
            stop = True
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - t0
            await pilot.pause(1.0)
            received, dropped = tail.received - received0, tail.dropped_by_source
            buffers = (
                f"tail view {tail.view.line_count:,} lines (cap {tail.max_lines:,}), "
                f"pending {tail.backlog:,}, runs table {len(app.dashboard.table.keys):,} rows"
            )
        await backend.close()

    print(
        f"tui tail bench: {elapsed:.1f} s at a target of {rate:,} lines/s, "
        f"app at {size[0]}x{size[1]}, tail following all runs\n"
    )
    print("   t(s)     pushed   received    behind  backlog(q)   RSS MB")
    for t, p, r, q, m in samples:
        print(f"  {t:5.1f}  {p:9,}  {r:9,}  {p - r:8,}  {q:10,}  {m:7.1f}")
    behind = [p - r for _, p, r, _, _ in samples]
    half = len(behind) // 2
    print()
    print(
        f"pushed {pushed:,} lines = {pushed / elapsed:,.0f} lines/s; the tail received "
        f"{received:,} (+{dropped:,} reported dropped by the source)"
    )
    first_half = max(behind[:half] or [0])
    second_half = max(behind[half:] or [0])
    last = behind[-1] if behind else 0
    trend = "no growing backlog" if last <= max(first_half, rate) else "BACKLOG GROWS"
    print(
        f"lines behind: max {first_half:,} in the first half, {second_half:,} in the second, "
        f"{last:,} at the end -> {trend}"
    )
    rss = [m for *_, m in samples]
    print(
        f"RSS: {rss0:.0f} MB before the load, max {max(rss):.0f} MB, last {rss[-1]:.0f} MB "
        f"(first half max {max(rss[:half] or [0]):.0f}, second half max "
        f"{max(rss[half:] or [0]):.0f})"
    )
    print(f"the TUI's own buffers at the end: {buffers}")
    p50i, p95i = pct(idle, 50) * 1000, pct(idle, 95) * 1000
    p50l, p95l = pct(loaded, 50) * 1000, pct(loaded, 95) * 1000
    print(
        f"keypress-to-render, no load : p50 {p50i:6.1f} ms  p95 {p95i:6.1f} ms  ({len(idle)} keys)"
    )
    print(
        f"keypress-to-render, loaded  : p50 {p50l:6.1f} ms  p95 {p95l:6.1f} ms  ({len(loaded)} keys)"
        f"  -> {p95l / p95i:.1f}x the no-load p95; goal p95 <= 50 ms: "
        f"{'met' if p95l <= 50 else 'NOT met'}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--size", default="160x48", help="terminal WIDTHxHEIGHT")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    asyncio.run(main(a.seconds, a.rate, (w, h)))
