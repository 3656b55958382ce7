"""Shared live tails (backend/embedded/fanout.py): one reader for every tail of a store, the same
batch object for every subscriber of a query, per-subscriber drops that are reported, an exact
hand-over from backfill to the shared stream, and the WAL checkpoints kept off the push path."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_logstore import T0, Clock

from backend.embedded import fanout
from backend.embedded.logstore import EmbeddedLogStore
from backend.embedded.sqlite_exec import CHECKPOINT_EVERY_S
from backend.http.wstail import FrameCache
from backend.models import LogEntry, Stream, TailBatch, TailEntry


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedLogStore]:
    s = await EmbeddedLogStore.open(tmp_path / "logs.sqlite3", clock=Clock())
    yield s
    await s.close()


def lines(batches: list[TailBatch]) -> list[str]:
    return [te.entry.line for b in batches for te in b.entries]


async def take(it: AsyncIterator[TailBatch], n: int, within: float = 5.0) -> list[TailBatch]:
    """Batches from `it` until they hold `n` entries or reported drops."""
    out: list[TailBatch] = []

    async def run() -> None:
        while sum(len(b.entries) + b.dropped for b in out) < n:
            out.append(await it.__anext__())

    await asyncio.wait_for(run(), within)
    return out


async def push(store: EmbeddedLogStore, agent: str, texts: list[str], ts0: int = T0) -> None:
    await store.push(
        [Stream({"agent": agent}, [LogEntry(ts0 + i, t) for i, t in enumerate(texts)])]
    )


async def following(it: AsyncIterator[TailBatch]) -> asyncio.Future[TailBatch]:
    """Start reading `it` (limit=0: nothing to replay) and let it reach the live phase."""
    nxt = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0.05)
    return nxt


async def cancel(nxt: asyncio.Future[TailBatch]) -> None:
    nxt.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await nxt


async def test_subscribers_of_one_query_get_the_same_batch_object(
    store: EmbeddedLogStore,
) -> None:
    a = store.tail('{agent="a"}', T0, limit=0)
    b = store.tail('{agent="a"}', T0, limit=0)
    na, nb = await following(a), await following(b)
    await push(store, "a", ["one", "two"])
    ba, bb = await asyncio.wait_for(na, 5), await asyncio.wait_for(nb, 5)
    assert lines([ba]) == ["one", "two"]
    assert ba is bb  # read and filtered once; encoded once by the HTTP layer
    await a.aclose()  # type: ignore[attr-defined]
    await b.aclose()  # type: ignore[attr-defined]


async def test_one_read_serves_different_queries_each_its_own_lines(
    store: EmbeddedLogStore,
) -> None:
    reads = 0
    original = store._hub_read

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal reads
        cursor, shares = original(*args, **kwargs)  # type: ignore[arg-type]
        reads += bool(shares)  # not the hub's polls that find nothing new
        return cursor, shares

    store._hub_read = counting  # type: ignore[method-assign]
    tails = {
        "a": store.tail('{agent="a"}', T0, limit=0),
        "b": store.tail('{agent="b"}', T0, limit=0),
        "errors": store.tail('{agent=~"a|b"} |= "error"', T0, limit=0),
    }
    pending = {k: await following(it) for k, it in tails.items()}
    reads = 0
    await store.push(
        [
            Stream({"agent": "a"}, [LogEntry(T0, "a ok"), LogEntry(T0 + 1, "a error")]),
            Stream({"agent": "b"}, [LogEntry(T0 + 2, "b error"), LogEntry(T0 + 3, "b ok")]),
        ]
    )
    got = {k: lines([await asyncio.wait_for(f, 5)]) for k, f in pending.items()}
    assert got == {
        "a": ["a ok", "a error"],
        "b": ["b error", "b ok"],
        "errors": ["a error", "b error"],  # in the order they were stored
    }
    assert reads == 1  # one read of the new entries for all three tails
    for it in tails.values():
        await it.aclose()  # type: ignore[attr-defined]


async def test_a_slow_subscriber_drops_its_own_oldest_and_is_told(tmp_path: Path) -> None:
    s = await EmbeddedLogStore.open(tmp_path / "d.sqlite3", clock=Clock(), tail_buffer=30)
    try:
        fast = s.tail('{agent="a"}', T0, limit=0)
        slow = s.tail('{agent="a"}', T0, limit=0)
        await following(slow)  # reads one batch, then nothing until the end
        got_fast: list[TailBatch] = []
        nxt = await following(fast)
        for k in range(10):  # 10 pushes of 10 lines, each read before the next push
            await push(s, "a", [f"line {k}-{i}" for i in range(10)], T0 + 100 * k)
            got_fast.append(await asyncio.wait_for(nxt, 5))
            nxt = asyncio.ensure_future(fast.__anext__())
        assert len(lines(got_fast)) == 100 and not any(b.dropped for b in got_fast)
        # The slow one had its first batch handed over already; of the other 90 lines only the
        # newest 30 (its buffer) wait, and the 60 before them are reported, with their times.
        rest = await take(slow, 90)
        dropped = sum(b.dropped for b in rest)
        kept = lines(rest)
        assert dropped == 60
        assert kept == [f"line {k}-{i}" for k in range(7, 10) for i in range(10)]
        assert rest[0].dropped_from == T0 + 100 and rest[0].dropped_to == T0 + 600 + 9
        await cancel(nxt)
        await fast.aclose()  # type: ignore[attr-defined]
        await slow.aclose()  # type: ignore[attr-defined]
    finally:
        await s.close()


async def test_joining_a_running_tail_misses_and_repeats_nothing(store: EmbeddedLogStore) -> None:
    first = store.tail('{agent="a"}', T0, limit=0)
    await following(first)
    stop = asyncio.Event()
    pushed: list[str] = []

    async def producer() -> None:
        i = 0
        while not stop.is_set():
            text = f"n{i}"
            await push(store, "a", [text], T0 + i)
            pushed.append(text)
            i += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(producer())
    await asyncio.sleep(0.1)
    # Join mid-stream with a backfill of everything so far: backfill + live must be the
    # whole sequence, each line once.
    late = store.tail('{agent="a"}', T0 - 1, limit=100_000)
    got: list[str] = []
    while len(got) < 200:
        got += lines([await asyncio.wait_for(late.__anext__(), 5)])
    stop.set()
    await task
    while len(got) < len(pushed):
        got += lines([await asyncio.wait_for(late.__anext__(), 5)])
    assert got == pushed
    await first.aclose()  # type: ignore[attr-defined]
    await late.aclose()  # type: ignore[attr-defined]


async def test_the_reader_stops_with_the_last_subscriber_and_restarts(
    store: EmbeddedLogStore,
) -> None:
    it = store.tail('{agent="a"}', T0, limit=0)
    nxt = await following(it)
    assert store._tail_hub.groups
    await cancel(nxt)
    await it.aclose()  # type: ignore[attr-defined]
    assert not store._tail_hub.groups and store._tail_hub.cursor is None
    again = store.tail('{agent="a"}', T0, limit=0)
    nxt = await following(again)
    await push(store, "a", ["after restart"])
    assert lines([await asyncio.wait_for(nxt, 5)]) == ["after restart"]
    await again.aclose()  # type: ignore[attr-defined]


async def test_closing_the_store_ends_waiting_tails_with_an_error(tmp_path: Path) -> None:
    s = await EmbeddedLogStore.open(tmp_path / "c.sqlite3", clock=Clock())
    it = s.tail('{agent="a"}', T0, limit=0)
    nxt = await following(it)
    await s.close()
    with pytest.raises(Exception, match="closed"):
        await asyncio.wait_for(nxt, 5)


def test_pause_grows_with_subscribers_within_its_bounds() -> None:
    async def never(cursor: int, groups: object, upto: object) -> tuple[int, list[object]]:
        raise AssertionError

    async def wait() -> None:
        return None

    hub = fanout.TailHub(never, wait, 0.02, 0.05, deliveries_per_s=4000)  # type: ignore[arg-type]
    group = fanout.TailGroup(("t", "q"), None)
    hub.groups[group.key] = group
    group.subs.add(fanout.Subscriber(10))
    assert hub.pause_s() == 0.02
    group.subs.update(fanout.Subscriber(10) for _ in range(119))  # 120 subscribers
    assert hub.pause_s() == pytest.approx(0.03)
    group.subs.update(fanout.Subscriber(10) for _ in range(880))
    assert hub.pause_s() == 0.05


def _share(group: fanout.TailGroup, lo: int, hi: int) -> tuple[fanout.TailGroup, object]:
    """What a read of ids (lo, hi] gives `group`: one line per id."""
    ids = list(range(lo + 1, hi + 1))
    entries = [TailEntry({"q": group.key[1]}, LogEntry(i, f"{group.key[1]} {i}")) for i in ids]
    return group, fanout.SharedBatch(lo, hi, ids, TailBatch(entries))


async def test_a_group_created_during_a_read_still_gets_that_reads_entries() -> None:
    gate = asyncio.Event()
    calls: list[tuple[int, list[str], int | None]] = []

    async def read(cursor: int, groups: list[fanout.TailGroup], upto: int | None) -> object:
        calls.append((cursor, [g.key[1] for g in groups], upto))
        if len(calls) == 1:
            await gate.wait()  # the first round is in flight while "b" is created
            return 10, [_share(g, cursor, 10) for g in groups]
        if upto is None:
            await asyncio.sleep(3600)  # nothing more comes
        assert upto is not None
        return upto, [_share(g, cursor, upto) for g in groups]

    async def wait() -> None:
        await asyncio.sleep(3600)

    hub = fanout.TailHub(read, wait, 0.0)  # type: ignore[arg-type]
    _, sub_a, _ = hub.join(("t", "a"), lambda: None, 100)
    hub.start(0)
    await asyncio.sleep(0.01)  # the reader is inside its first read now
    _, sub_b, joined_b = hub.join(("t", "b"), lambda: None, 100)
    assert joined_b == 0  # so "b" must be served (0, 10] although the read began without it
    gate.set()
    got_a = await asyncio.wait_for(sub_a.next(), 5)
    got_b = await asyncio.wait_for(sub_b.next(), 5)
    assert [te.entry.line for te in got_a.entries] == [f"a {i}" for i in range(1, 11)]
    assert [te.entry.line for te in got_b.entries] == [f"b {i}" for i in range(1, 11)]
    assert calls[:2] == [(0, ["a"], None), (0, ["b"], 10)]
    assert hub.cursor == 10
    await hub.stop()


def test_frame_cache_encodes_a_batch_once_per_format() -> None:
    cache = FrameCache(size=2)
    calls: list[str] = []

    def build(tag: str) -> object:
        def run() -> list[tuple[str, int]]:
            calls.append(tag)
            return [(tag, 1)]

        return run

    a, b, c = TailBatch([]), TailBatch([]), TailBatch([])
    assert cache.get(a, "loki", build("a")) == [("a", 1)]  # type: ignore[arg-type]
    assert cache.get(a, "loki", build("a")) == [("a", 1)]  # type: ignore[arg-type]
    assert cache.get(a, "api", build("a-api")) == [("a-api", 1)]  # type: ignore[arg-type]
    assert calls == ["a", "a-api"]
    cache.get(b, "loki", build("b"))  # type: ignore[arg-type]
    cache.get(c, "loki", build("c"))  # type: ignore[arg-type]  # evicts the oldest
    cache.get(a, "loki", build("a again"))  # type: ignore[arg-type]
    assert calls == ["a", "a-api", "b", "c", "a again"]


async def test_wal_is_checkpointed_off_the_push_path(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    s = await EmbeddedLogStore.open(path, clock=Clock())
    try:
        big = "x" * 2000
        for k in range(20):
            await push(s, "a", [f"{big} {k} {i}" for i in range(50)], T0 + 100 * k)
        # The writer itself never checkpoints (that stalled pushes); the checkpoint thread does.
        mode = await s._db.write(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        assert mode == 0
        written = 20 * 50 * 2000
        assert path.stat().st_size < written  # so far, in the WAL only
        deadline = asyncio.get_running_loop().time() + CHECKPOINT_EVERY_S * 5
        while path.stat().st_size < written:  # the pages reach the database file
            assert asyncio.get_running_loop().time() < deadline, "no checkpoint"
            await asyncio.sleep(0.1)
        probe = sqlite3.connect(path)
        try:
            while True:
                busy, log_frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # busy: the checkpoint thread was running its own checkpoint at that instant
                # (SQLite allows one checkpointer at a time); ask again.
                if not busy or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
        finally:
            probe.close()
        assert busy == 0 and done == log_frames  # nothing left behind
    finally:
        await s.close()


def test_settle_heap_freezes_the_startup_objects() -> None:
    code = (
        "import gc; from backend.facade import settle_heap; "
        "assert gc.get_freeze_count() == 0; settle_heap(); "
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
