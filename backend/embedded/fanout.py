"""Shared live tails: one reader for all of a store's tails, any number of subscribers.

Two hundred dashboards tailing must not cost two hundred SQLite reads and pipeline passes per
push. The `TailHub` reads the entries stored after its cursor (the `entries.id` it follows)
once per round, gives each `TailGroup` (one per tenant and query) its share, and offers the same
`SharedBatch` to every `Subscriber` of the group; each subscriber keeps its own bounded queue,
so a slow one drops its own oldest entries (reported in `TailBatch.dropped`, never silently)
without holding the others back.

The hand-over from a subscriber's backfill to the shared stream is exact: every batch offered
after a subscriber registers covers ids above the hub cursor it saw (`joined_at`); entries up
to its own backfill cursor are filtered out, and a gap between the two is read privately
(`EmbeddedLogStore.tail`). Unfiltered batches are passed on as the very same object, so
consumers that encode a batch for many sockets can encode it once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..models import TailBatch


@dataclass(slots=True)
class SharedBatch:
    """What one read of the group's reader found: entries with ids in (lo_id, hi_id]."""

    lo_id: int
    hi_id: int
    ids: list[int]  # entries.id of each entry of `batch`, in order
    batch: TailBatch


class Subscriber:
    """One consumer of a group: a bounded queue of shared batches (at most `limit` entries
    waiting; the oldest are dropped and reported when it is full)."""

    __slots__ = (
        "_dropped",
        "_dropped_from",
        "_dropped_to",
        "_error",
        "_queue",
        "_queued",
        "_wake",
        "limit",
        "skip_upto",
    )

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.skip_upto = 0  # entries with ids <= this already reached the consumer
        self._queue: deque[SharedBatch] = deque()
        self._queued = 0
        self._dropped = 0
        self._dropped_from: int | None = None
        self._dropped_to: int | None = None
        self._error: BaseException | None = None
        self._wake = asyncio.Event()

    def offer(self, sb: SharedBatch) -> None:
        if sb.hi_id <= self.skip_upto:
            return
        self._queue.append(sb)
        self._queued += len(sb.batch.entries)
        # Keep the newest batch even if it alone is over the limit: the reader's own
        # `tail_buffer` skip already bounds a single read.
        while self._queued > self.limit and len(self._queue) > 1:
            old = self._queue.popleft()
            self._queued -= len(old.batch.entries)
            self._note_dropped(old)
        self._wake.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake.set()

    def _note_dropped(self, sb: SharedBatch) -> None:
        b = sb.batch
        if b.dropped:
            self._add_drop(b.dropped, b.dropped_from, b.dropped_to)
        kept = [te.entry.ts for i, te in zip(sb.ids, b.entries, strict=True) if i > self.skip_upto]
        if kept:
            self._add_drop(len(kept), min(kept), max(kept))

    def _add_drop(self, n: int, lo: int | None, hi: int | None) -> None:
        self._dropped += n
        if lo is not None:
            self._dropped_from = lo if self._dropped_from is None else min(self._dropped_from, lo)
        if hi is not None:
            self._dropped_to = hi if self._dropped_to is None else max(self._dropped_to, hi)

    async def next(self) -> TailBatch:
        """The next batch for this consumer (waits for one; raises the reader's error)."""
        while True:
            if self._queue:
                sb = self._queue.popleft()
                self._queued -= len(sb.batch.entries)
                out = self._own_view(sb)
                if self._dropped:
                    out = TailBatch(
                        entries=out.entries,
                        dropped=self._dropped + out.dropped,
                        dropped_from=_min(self._dropped_from, out.dropped_from),
                        dropped_to=_max(self._dropped_to, out.dropped_to),
                    )
                    self._dropped, self._dropped_from, self._dropped_to = 0, None, None
                if out.entries or out.dropped:
                    return out
                continue
            if self._error is not None:
                raise self._error
            self._wake.clear()
            await self._wake.wait()

    def _own_view(self, sb: SharedBatch) -> TailBatch:
        if sb.lo_id >= self.skip_upto:
            return sb.batch  # the shared object itself: encoded once for every consumer
        b = sb.batch
        entries = [te for i, te in zip(sb.ids, b.entries, strict=True) if i > self.skip_upto]
        return TailBatch(entries, b.dropped, b.dropped_from, b.dropped_to)


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class TailGroup:
    """The subscribers of one (tenant, query), and what the hub's reader keeps for it (the
    compiled query, its matching streams). `plan` is for the store's read function."""

    def __init__(self, key: tuple[str, str], plan: Any) -> None:
        self.key = key
        self.plan = plan
        self.subs: set[Subscriber] = set()


# read(cursor, groups, upto): the entries after `cursor` (up to id `upto` if given), split among
# `groups`, and the cursor to continue from.
Read = Callable[
    [int, list[TailGroup], int | None],
    Awaitable[tuple[int, list[tuple[TailGroup, SharedBatch]]]],
]


class TailHub:
    """One reader for every live tail of a store: each read takes the entries stored after the
    cursor once and hands each group its share (`read(cursor, groups, upto)`); `wait()` returns when
    a push may have added entries (or after a poll interval). While entries keep coming, reads
    are paced: fewer, fuller batches (and frames, and socket writes) for every subscriber. The
    pause grows with the number of subscribers, from `gather_s` up to `max_gather_s`, so that
    all of them together get about `deliveries_per_s` batches a second: the per-batch cost of a
    consumer (a wake-up, a frame, a socket write) is what limits a busy hub, not the lines."""

    def __init__(
        self,
        read: Read,
        wait: Callable[[], Awaitable[None]],
        gather_s: float,
        max_gather_s: float | None = None,
        deliveries_per_s: float = 4000.0,
    ) -> None:
        self._read = read
        self._wait = wait
        self._gather_s = gather_s
        self._max_gather_s = gather_s if max_gather_s is None else max(gather_s, max_gather_s)
        self._deliveries_per_s = deliveries_per_s
        self.cursor: int | None = None
        self.groups: dict[tuple[str, str], TailGroup] = {}
        self._task: asyncio.Task[None] | None = None

    def join(
        self, key: tuple[str, str], make_plan: Callable[[], Any], limit: int
    ) -> tuple[TailGroup, Subscriber, int | None]:
        """Register a subscriber; also returns the cursor it joined at (None before the first
        subscriber's backfill has set it: see `start`)."""
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = TailGroup(key, make_plan())
        sub = Subscriber(limit)
        group.subs.add(sub)
        return group, sub, self.cursor

    def start(self, cursor: int) -> int:
        """Start reading after `cursor` unless already reading; returns the hub's cursor."""
        if self.cursor is None:
            self.cursor = cursor
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="agentlog-tail-hub")
        return self.cursor

    async def leave(self, group: TailGroup, sub: Subscriber) -> None:
        group.subs.discard(sub)
        if not group.subs and self.groups.get(group.key) is group:
            del self.groups[group.key]
        if not self.groups:
            await self.stop()

    async def _run(self) -> None:
        try:
            while self.groups:
                assert self.cursor is not None
                prev = self.cursor
                served = list(self.groups.values())
                cursor, shares = await self._read(prev, served, None)
                # A group created while that read ran was not part of it, yet its subscribers
                # joined at `prev`: read its share of (prev, cursor] before moving on.
                while late := [g for g in self.groups.values() if g not in served]:
                    served += late
                    at = prev
                    while at < cursor:
                        at, more = await self._read(at, late, cursor)
                        shares += more
                # Cursor and offers change together (no await between): a subscriber that
                # registers now sees only batches above the cursor it read.
                self.cursor = cursor
                for group, sb in shares:
                    for sub in group.subs:
                        sub.offer(sb)
                if shares:
                    pause = self.pause_s()
                    if pause:
                        await asyncio.sleep(pause)
                    continue
                await self._wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to every subscriber, which raises it
            self._fail(exc)

    def pause_s(self) -> float:
        """How long the reader waits after a round that found entries."""
        subscribers = sum(len(g.subs) for g in self.groups.values())
        want = subscribers / self._deliveries_per_s
        return min(self._max_gather_s, max(self._gather_s, want))

    def _fail(self, exc: BaseException) -> None:
        for group in self.groups.values():
            for sub in group.subs:
                sub.fail(exc)
        # The failed subscribers leave on their own; newcomers start afresh.
        self.groups = {}
        self.cursor = None

    async def stop(self, reason: BaseException | None = None) -> None:
        """Stop reading; with `reason`, the subscribers still waiting raise it."""
        if reason is not None:
            self._fail(reason)
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])  # not `await task`: our own cancel must propagate
        if not self.groups:
            self.cursor = None
