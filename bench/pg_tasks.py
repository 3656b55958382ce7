"""Task list speed on 100,000 runs in PostgreSQL, next to the same on SQLite in the same run.

    python bench/pg_tasks.py [--runs 100000] [--dsn postgresql://postgres@127.0.0.1:5432/test]

Goal (issue 5): a list/filter page (50 runs) p50 <= 20 ms on PostgreSQL. Measured through the
TaskStore API (what the TUI calls), for: the default failing-first page 1, page 50 reached by
cursor, a status filter, an agent filter, and a text search (one that matches often, and one
that matches nothing, which has to look at every run). Both stores are loaded with the same
runs through apply_events in batches; the PostgreSQL tables are ANALYZEd after the bulk load, as
autovacuum would do shortly after on its own. The schema (random name) is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from _common import pct, timed

from backend.embedded.tasks import SqliteTaskStore
from backend.models import AgentEvent, EventKind, RunStatus, TaskFilter, TaskPage
from backend.postgres import PostgresTaskStore

NS = 1_000_000_000
GOAL_MS = 20.0
ERRORS = [
    ("TimeoutError", "upstream gateway timed out after 30s"),
    ("RateLimitError", "rate limited by provider, retry after 20s"),
    ("ValueError", "JSONDecodeError in tool output"),
    ("ContextError", "context length exceeded (131072 tokens)"),
]


def fleet(runs: int, now: int, seed: int = 11) -> list[list[AgentEvent]]:
    """`runs` runs over the last 24 h as apply_events batches of ~1,000 runs: 70 % succeeded,
    12 % failed, 5 % timeout, 3 % cancelled, 10 % still running (some of them stalled)."""
    rng = random.Random(seed)
    batches: list[list[AgentEvent]] = []
    batch: list[AgentEvent] = []
    for i in range(runs):
        run = f"run-{i:06d}-{rng.getrandbits(32):08x}"
        agent = f"agent-{rng.randrange(12):02d}"
        start = now - rng.randrange(24 * 3600) * NS
        dur = rng.randrange(5, 900) * NS
        roll = rng.random()
        batch.append(
            AgentEvent(
                start, run, EventKind.RUN_START, agent=agent, task=f"task {rng.randrange(30)}"
            )
        )
        for k in range(rng.randrange(1, 4)):
            batch.append(
                AgentEvent(
                    start + (k + 1) * NS,
                    run,
                    EventKind.LLM_CALL,
                    agent=agent,
                    model="m1",
                    input_tokens=900,
                    output_tokens=90,
                    cost_usd=0.002,
                )
            )
        if roll < 0.70:
            batch.append(AgentEvent(start + dur, run, EventKind.RUN_END, status="succeeded"))
        elif roll < 0.87:
            etype, msg = rng.choice(ERRORS)
            batch.append(
                AgentEvent(
                    start + dur - NS, run, EventKind.ERROR, error_type=etype, error_message=msg
                )
            )
            status = "failed" if roll < 0.82 else "timeout"
            batch.append(AgentEvent(start + dur, run, EventKind.RUN_END, status=status))
        elif roll < 0.90:
            batch.append(AgentEvent(start + dur, run, EventKind.RUN_END, status="cancelled"))
        else:  # running: last heard of a few seconds to hours ago
            seen = min(now, start + rng.randrange(0, 2 * 3600) * NS)
            batch.append(AgentEvent(seen, run, EventKind.STEP, agent=agent))
        if len(batch) >= 5000:
            batches.append(batch)
            batch = []
    if batch:
        batches.append(batch)
    return batches


Store = SqliteTaskStore | PostgresTaskStore


async def load(store: Store, batches: list[list[AgentEvent]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    touched = 0
    for batch in batches:
        touched += await store.apply_events(batch)
    return time.perf_counter() - t0, touched


async def cursor_for_page(store: Store, page: int, limit: int) -> str:
    cursor: str | None = None
    for _ in range(page - 1):
        got = await store.list(TaskFilter(), limit=limit, cursor=cursor)
        assert got.next_cursor is not None, "not enough runs for that page"
        cursor = got.next_cursor
    assert cursor is not None
    return cursor


def cases(store: Store, cursor50: str) -> dict[str, Callable[[], Awaitable[TaskPage]]]:
    return {
        "failing-first page 1": lambda: store.list(TaskFilter(), limit=50),
        "page 50 via cursor": lambda: store.list(TaskFilter(), limit=50, cursor=cursor50),
        "status=failed": lambda: store.list(TaskFilter(statuses=(RunStatus.FAILED,)), limit=50),
        "status=stalled": lambda: store.list(TaskFilter(statuses=(RunStatus.STALLED,)), limit=50),
        "agent=agent-07": lambda: store.list(TaskFilter(agents=("agent-07",)), limit=50),
        "text 'gateway'": lambda: store.list(TaskFilter(text="gateway"), limit=50),
        "text, no match": lambda: store.list(TaskFilter(text="no-such-thing"), limit=50),
    }


async def measure(store: Store, repeat: int) -> dict[str, list[float]]:
    cursor50 = await cursor_for_page(store, 50, 50)
    out: dict[str, list[float]] = {}
    for name, fn in cases(store, cursor50).items():
        await timed(fn, 3)  # warm: statement caches, pages in memory
        out[name] = await timed(fn, repeat)
    out["counts (whole table)"] = await timed(lambda: store.counts(TaskFilter()), repeat)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument(
        "--dsn",
        default=os.environ.get(
            "AGENTLOG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = ap.parse_args()
    now = time.time_ns()
    batches = fleet(args.runs, now)
    events = sum(len(b) for b in batches)
    schema = f"bench_tasks_{secrets.token_hex(4)}"
    pg = PostgresTaskStore(args.dsn, schema=schema, pool_max=4)
    with tempfile.TemporaryDirectory() as tmp:
        lite = SqliteTaskStore(Path(tmp) / "tasks.sqlite3")
        try:
            await pg.open()
            await lite.open()
            pg_s, pg_runs = await load(pg, batches)
            lite_s, lite_runs = await load(lite, batches)
            assert pg_runs == lite_runs  # runs touched, summed over the batches
            print(f"runs: {args.runs:,} ({events:,} events in {len(batches)} apply_events batches)")
            print(
                f"load: PostgreSQL {pg_s:6.2f} s ({events / pg_s:9,.0f} events/s)   "
                f"SQLite {lite_s:6.2f} s ({events / lite_s:9,.0f} events/s)   ratio {pg_s / lite_s:.2f}"
            )
            conn = await asyncpg.connect(args.dsn)
            try:
                await conn.execute(f'ANALYZE "{schema}".tasks')
            finally:
                await conn.close()
            assert (await pg.counts(TaskFilter())) == (await lite.counts(TaskFilter()))
            pg_t = await measure(pg, args.repeat)
            lite_t = await measure(lite, args.repeat)
        finally:
            await lite.close()
            await pg.close()
            conn = await asyncpg.connect(args.dsn)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

    print(f"\npages of 50 runs, {args.repeat} timed calls each (ms)")
    print(
        f"{'query':<22} {'pg p50':>8} {'pg p95':>8} {'sqlite p50':>11} {'sqlite p95':>11} "
        f"{'pg/sqlite':>10}  goal p50 <= {GOAL_MS:g} ms"
    )
    for name, pg_times in pg_t.items():
        p50, p95 = pct(pg_times, 50) * 1000, pct(pg_times, 95) * 1000
        l50, l95 = pct(lite_t[name], 50) * 1000, pct(lite_t[name], 95) * 1000
        goal = "" if name.startswith("counts") else ("ok" if p50 <= GOAL_MS else "MISSED")
        print(f"{name:<22} {p50:8.2f} {p95:8.2f} {l50:11.2f} {l95:11.2f} {p50 / l50:10.2f}  {goal}")
    print(f"(schema {schema} dropped)")


if __name__ == "__main__":
    asyncio.run(main())
