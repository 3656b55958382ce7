"""The SQLite TaskStore (backend.embedded.tasks) and its executor (backend.embedded.sqlite_exec).

Only what is SQLite's own lives here (the file, its schema version, locks, corruption, the
executor). The behaviour every TaskStore shares is in test_tasks_contract.py, run against SQLite
and PostgreSQL alike.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.embedded.sqlite_exec import SqliteExecutor
from backend.embedded.tasks import SCHEMA_VERSION, TRIAGE_TRANSITIONS, SqliteTaskStore
from backend.errors import StorageError
from backend.models import (
    AgentEvent,
    EventKind,
    HealthState,
    Task,
    TriageState,
)

S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S
STALL_S = 600.0


class Clock:
    """An injectable clock (ns) the tests move by hand."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 60 * S)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteTaskStore]:
    st = SqliteTaskStore(tmp_path / "db" / "tasks.db", stall_after_s=STALL_S, clock=clock)
    await st.open()
    yield st
    await st.close()


def e(kind: EventKind, run: str, ts: int, **kw: object) -> AgentEvent:
    return AgentEvent(ts=ts, run_id=run, kind=kind, **kw)  # type: ignore[arg-type]


async def got(store: SqliteTaskStore, run_id: str, tenant: str = "fake") -> Task:
    task = await store.get(run_id, tenant)
    assert task is not None, run_id
    return task


# ---------------------------------------------------------------- the shared triage table


def test_triage_table_matches_the_rules() -> None:
    new, acked, resolved, ignored = TriageState
    expected = {
        new: {acked, resolved, ignored},
        acked: {resolved, ignored, new},
        resolved: {new, acked},
        ignored: {new},
    }
    assert expected == TRIAGE_TRANSITIONS


# ---------------------------------------------------------------- storage


async def test_schema_version_and_health(store: SqliteTaskStore) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    health = await store.health()
    assert (health.kind, health.state, health.detail) == ("sqlite", HealthState.OK, str(store.path))
    await store.open()  # idempotent


async def test_reopen_keeps_data_and_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first = SqliteTaskStore(path)
    await first.apply_events([e(EventKind.STEP, "r", T0)])  # opens on first use
    await first.close()
    second = SqliteTaskStore(path)
    assert (await got(second, "r")).step_count == 1
    await second.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    third = SqliteTaskStore(path)
    with pytest.raises(StorageError, match="newer"):
        await third.open()
    await third.close()


async def test_locked_database_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteTaskStore(path, busy_timeout_ms=50)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StorageError, match="locked") as info:
            await store.apply_events([e(EventKind.STEP, "r", T0)])
        assert str(path) in str(info.value)
        assert "close other agentlog" in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.apply_events([e(EventKind.STEP, "r", T0)]) == 1  # recovers
    await store.close()


async def test_corrupt_database_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all " * 200)
    store = SqliteTaskStore(path)
    with pytest.raises(StorageError, match="not a usable SQLite database") as info:
        await store.open()
    assert str(path) in str(info.value)
    health = await store.health()
    assert health.state is HealthState.DOWN and str(path) in health.reason
    await store.close()


async def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    store = SqliteTaskStore(blocker / "sub" / "tasks.db")
    with pytest.raises(StorageError, match="cannot be opened") as info:
        await store.open()
    assert str(blocker) in str(info.value)
    await store.close()


# ---------------------------------------------------------------- the executor


async def test_executor_rolls_back_and_passes_errors_through(tmp_path: Path) -> None:
    db = SqliteExecutor(tmp_path / "x" / "e.db", init_sql="CREATE TABLE t (k TEXT PRIMARY KEY);")
    await db.write(lambda c: c.execute("INSERT INTO t VALUES ('a')"))

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('b')")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await db.write(fail)
    with pytest.raises(sqlite3.IntegrityError):  # a bug in the caller's data, not the file
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('a')"))
    rows = await db.read(lambda c: c.execute("SELECT k FROM t").fetchall())
    assert rows == [("a",)]
    with pytest.raises(StorageError):  # readers are query-only
        await db.read(lambda c: c.execute("INSERT INTO t VALUES ('z')"))
    await db.close()
    await db.close()
    with pytest.raises(StorageError, match="closed"):
        await db.read(lambda c: None)


async def test_executor_work_does_not_block_the_loop_and_readers_run_beside_writer(
    tmp_path: Path,
) -> None:
    db = SqliteExecutor(tmp_path / "e.db", init_sql="CREATE TABLE t (v INTEGER);", readers=2)
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2)")
        time.sleep(0.3)

    tick_task = asyncio.create_task(ticker())
    write = asyncio.create_task(db.write(slow_write))
    await asyncio.sleep(0.05)  # the write transaction is open now
    started = time.perf_counter()
    during = await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
    read_s = time.perf_counter() - started
    await write
    tick_task.cancel()
    assert during == 1  # WAL: the reader sees the last commit, without waiting for the writer
    assert read_s < 0.2
    assert ticks >= 20  # the loop kept running while the write slept in its thread
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
    await db.close()


def test_executor_refuses_memory_database() -> None:
    with pytest.raises(ValueError, match="memory"):
        SqliteExecutor(Path(":memory:"))


def test_last_error_does_not_repeat_its_type() -> None:
    from backend.embedded.tasks import _format_error
    from backend.models import AgentEvent, EventKind

    def ev(t: str, m: str) -> AgentEvent:
        return AgentEvent(ts=1, run_id="r", kind=EventKind.ERROR, error_type=t, error_message=m)

    assert _format_error(ev("KeyError", "KeyError: 'items'")) == "KeyError: 'items'"
    assert _format_error(ev("TimeoutError", "tool x timed out")) == "TimeoutError: tool x timed out"
    assert _format_error(ev("", "boom")) == "boom"
