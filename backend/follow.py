"""Keep the task table current from a log source that agents push to directly (Loki).

`agentlog serve --index-from-loki SELECTOR` runs `follow_and_index`: it catches up from where it
stopped (a small state file in the data directory), then follows the live tail, folding the run
events it finds into the task table.

Resuming: the state keeps the newest timestamp folded and digests of the lines folded at exactly
that timestamp; on restart, reading starts at that timestamp (inclusive) and those lines are
skipped, so nothing is counted twice and nothing between is missed. The state is written after
each batch is folded, so a crash in between re-folds at most that one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from .errors import ServiceUnavailable
from .models import DEFAULT_TENANT, Direction, StreamsResult, TailEntry

if TYPE_CHECKING:
    from .facade import Backend

PAGE = 1000
RETRY_S = 2.0


def _digest(te: TailEntry) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(orjson.dumps(te.labels, option=orjson.OPT_SORT_KEYS))
    h.update(b"\0")
    h.update(te.entry.line.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass(slots=True)
class FollowState:
    selector: str
    ts: int = 0  # newest timestamp folded
    seen: list[str] = field(default_factory=list)  # digests of lines folded at exactly `ts`
    folded: int = 0  # lines folded so far (for the log line)

    @classmethod
    def load(cls, path: Path, selector: str, start_ns: int) -> FollowState:
        try:
            d = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return cls(selector=selector, ts=start_ns)
        if d.get("selector") != selector:  # another selector: start afresh
            return cls(selector=selector, ts=start_ns)
        return cls(selector, int(d["ts"]), list(d.get("seen", [])), int(d.get("folded", 0)))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(
            orjson.dumps(
                {"selector": self.selector, "ts": self.ts, "seen": self.seen, "folded": self.folded}
            )
        )
        os.replace(tmp, path)  # atomic: a crash leaves the old state or the new one

    def fresh(self, entries: Sequence[TailEntry]) -> list[TailEntry]:
        """Entries not folded yet, and the state advanced past them."""
        seen = set(self.seen)
        out = []
        for te in sorted(entries, key=lambda t: t.entry.ts):
            ts = te.entry.ts
            if ts < self.ts:
                continue
            d = _digest(te)
            if ts == self.ts and d in seen:
                continue
            if ts > self.ts:
                self.ts, seen = ts, set()
            seen.add(d)
            out.append(te)
        self.seen = sorted(seen)
        self.folded += len(out)
        return out


async def follow_and_index(
    backend: Backend,
    selector: str,
    state_path: Path,
    *,
    start_ns: int | None = None,
    tenant: str = DEFAULT_TENANT,
    stop: asyncio.Event | None = None,
) -> FollowState:
    """Catch up, then follow; returns when `stop` is set. A source that goes away is retried."""
    stop = stop or asyncio.Event()
    state = await asyncio.to_thread(
        FollowState.load, state_path, selector, start_ns or time.time_ns() - 3600 * 1_000_000_000
    )

    async def fold(entries: Sequence[TailEntry]) -> None:
        fresh = state.fresh(entries)
        if fresh:
            await backend.fold_entries(fresh, tenant)
            await asyncio.to_thread(state.save, state_path)

    while not stop.is_set():
        try:
            # Catch up with pages of query_range, oldest first.
            while not stop.is_set():
                res = await backend.logs.query_range(
                    selector,
                    state.ts,
                    time.time_ns() + 1,
                    limit=PAGE,
                    direction=Direction.FORWARD,
                    tenant=tenant,
                )
                assert isinstance(res, StreamsResult)
                page = [TailEntry(s.labels, e) for s in res.streams for e in s.entries]
                before = state.folded
                await fold(page)
                if len(page) < PAGE or state.folded == before:
                    break
            # Then follow the live tail from the newest folded timestamp.
            tail = backend.logs.tail(selector, state.ts, limit=PAGE, tenant=tenant)
            stopper = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    nxt = asyncio.ensure_future(anext(tail))
                    done, _ = await asyncio.wait({nxt, stopper}, return_when="FIRST_COMPLETED")
                    if stopper in done:
                        nxt.cancel()
                        with contextlib.suppress(BaseException):
                            await nxt
                        break
                    await fold(nxt.result().entries)
            finally:
                stopper.cancel()
                with contextlib.suppress(Exception):
                    await tail.aclose()  # type: ignore[attr-defined]
        except (ServiceUnavailable, StopAsyncIteration):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_S)
    return state
