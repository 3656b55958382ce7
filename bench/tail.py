"""Tail latency: one subscriber while 5,000 lines/s are pushed into the embedded store.

    python bench/tail.py [--seconds 10] [--rate 5000]

Goal (issue 2): p99 push-to-delivery <= 50 ms, no gaps. Baseline in the same run: the same items
through a bare asyncio.Queue (what in-process delivery costs with no store at all).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from _common import pct

from backend.embedded.logstore import EmbeddedLogStore
from backend.models import LogEntry, Stream

BATCH_EVERY = 0.02  # 50 pushes/s


async def produce(push: object, rate: int, seconds: float) -> int:
    per = max(1, round(rate * BATCH_EVERY))
    seq = 0
    t_end = time.perf_counter() + seconds
    next_at = time.perf_counter()
    while time.perf_counter() < t_end:
        now = time.time_ns()
        entries = [
            LogEntry(now + i, f"seq={seq + i} sent={time.perf_counter_ns()}") for i in range(per)
        ]
        seq += per
        await push(entries)  # type: ignore[operator]
        next_at += BATCH_EVERY
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    return seq


def latency_of(line: str) -> tuple[int, float]:
    seq_part, sent_part = line.split(" ")
    return int(seq_part[4:]), (time.perf_counter_ns() - int(sent_part[5:])) / 1e6


async def run_store(rate: int, seconds: float) -> tuple[list[float], int, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await EmbeddedLogStore.open(Path(tmp) / "tail.sqlite3")
        lat: list[float] = []
        seen: list[int] = []
        dropped = 0
        it = store.tail('{job="bench"}', limit=0)
        ready = asyncio.Event()

        async def consume() -> None:
            nonlocal dropped
            nxt = asyncio.ensure_future(it.__anext__())
            ready.set()
            while True:
                batch = await nxt
                dropped += batch.dropped
                for te in batch.entries:
                    s, ms_ = latency_of(te.entry.line)
                    seen.append(s)
                    lat.append(ms_)
                nxt = asyncio.ensure_future(it.__anext__())

        consumer = asyncio.create_task(consume())
        await ready.wait()
        await asyncio.sleep(0.1)

        async def push(entries: list[LogEntry]) -> None:
            await store.push([Stream({"job": "bench"}, entries)])

        sent = await produce(push, rate, seconds)
        await asyncio.sleep(0.5)
        consumer.cancel()
        await store.close()
        gaps = sum(1 for a, b in itertools.pairwise(seen) if b != a + 1)
        return lat, sent, gaps, dropped


async def run_queue(rate: int, seconds: float) -> tuple[list[float], int]:
    q: asyncio.Queue[list[LogEntry]] = asyncio.Queue()
    lat: list[float] = []

    async def consume() -> None:
        while True:
            for e in await q.get():
                lat.append(latency_of(e.line)[1])

    consumer = asyncio.create_task(consume())

    async def push(entries: list[LogEntry]) -> None:
        q.put_nowait(entries)

    sent = await produce(push, rate, seconds)
    await asyncio.sleep(0.2)
    consumer.cancel()
    return lat, sent


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=5000)
    args = ap.parse_args()
    base, _ = await run_queue(args.rate, args.seconds)
    lat, sent, gaps, dropped = await run_store(args.rate, args.seconds)
    print(f"tail: {sent:,} lines pushed at {args.rate:,}/s for {args.seconds:.0f} s")
    print(
        f"  bare asyncio.Queue (baseline)  p50 {pct(base, 50):6.2f} ms  p99 {pct(base, 99):6.2f} ms"
    )
    p99 = pct(lat, 99)
    print(
        f"  embedded store tail            p50 {pct(lat, 50):6.2f} ms  p99 {p99:6.2f} ms   "
        f"delivered {len(lat):,}/{sent:,}, gaps {gaps}, dropped {dropped}"
    )
    print(
        f"  p99 over baseline p99: {p99 - pct(base, 99):+.2f} ms;  goal p99 <= 50 ms, no gaps: "
        f"{'meets' if p99 <= 50 and gaps == 0 and len(lat) == sent else 'MISSES'}"
    )


if __name__ == "__main__":
    asyncio.run(main())
