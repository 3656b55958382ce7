"""What only the PostgreSQL TaskStore has: migrations under an advisory lock, the pool, live
updates across instances (LISTEN/NOTIFY), and its faults (refused, hanging, dropped server).

Its behaviour as a TaskStore is tested in test_tasks_contract.py, against SQLite too. Every test
here uses its own schema (random name), dropped at teardown; they fail, not skip, in CI when the
server is missing (the `postgres_dsn` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import orjson
import pytest

from backend.errors import ConfigError, ServiceUnavailable, StorageError, UsageError
from backend.models import AgentEvent, EventKind, HealthState, TaskFilter, TriageState
from backend.postgres import MIGRATION_LOCK_ID, PostgresTaskStore, load_migrations
from backend.postgres.tasks import _notify_payloads

pytestmark = pytest.mark.postgres

S = 1_000_000_000
T0 = 1_700_000_000 * S


def e(kind: EventKind, run: str, ts: int, **kw: object) -> AgentEvent:
    return AgentEvent(ts=ts, run_id=run, kind=kind, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = f"test_pg_{secrets.token_hex(6)}"
    yield name
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def stores(
    dsn: str, schema: str, n: int = 1, **kw: object
) -> AsyncIterator[list[PostgresTaskStore]]:
    made = [PostgresTaskStore(dsn, schema=schema, **kw) for _ in range(n)]  # type: ignore[arg-type]
    try:
        yield made
    finally:
        for st in made:
            await st.close()


async def within(seconds: float, aw: Awaitable[object]) -> object:
    return await asyncio.wait_for(aw, timeout=seconds)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dsn_via(dsn: str, port: int) -> str:
    return dsn.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


class Proxy:
    """A TCP proxy in front of PostgreSQL that can freeze (keep connections, forward nothing),
    cut (close every connection) and refuse (stop listening), then recover."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.add(up_writer)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while chunk := await src.read(65536):
                await self.flowing.wait()
                dst.write(chunk)
                await dst.drain()
        dst.close()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()

    async def refuse(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.cut()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.cut()
        for task in list(self.tasks):
            task.cancel()


@pytest.fixture
async def proxy() -> AsyncIterator[Proxy]:
    px = Proxy()
    await px.start()
    yield px
    await px.stop()


async def eventually(fn: Callable[[], Awaitable[object]], seconds: float = 5.0) -> object:
    """`fn()`'s result once it stops raising ServiceUnavailable (the store reconnects)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await fn()
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------- migrations


def test_migrations_ship_inside_the_package() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "tasks" and "CREATE TABLE tasks" in migrations[0].sql
    folder = Path(__file__).resolve().parent.parent / "backend" / "postgres" / "migrations"
    assert sorted(p.name for p in folder.glob("*.sql")) == [
        f"{m.version:03d}_{m.name}.sql" for m in migrations
    ]


async def test_concurrent_starts_apply_each_migration_once(postgres_dsn: str, schema: str) -> None:
    async with stores(postgres_dsn, schema, 5) as five:
        await asyncio.gather(*(st.open() for st in five))
        conn = await asyncpg.connect(postgres_dsn)
        try:
            rows = await conn.fetch(
                f'SELECT version, name FROM "{schema}".agentlog_migrations ORDER BY version'
            )
        finally:
            await conn.close()
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in load_migrations()
        ]
        # all five work on the same table
        await five[0].apply_events([e(EventKind.RUN_START, "r", T0)])
        for st in five[1:]:
            assert (await st.get("r")) is not None
    async with stores(postgres_dsn, schema) as (again,):
        await again.open()  # a restart finds nothing to do
        assert (await again.get("r")) is not None


async def test_migrations_wait_for_the_advisory_lock(postgres_dsn: str, schema: str) -> None:
    holder = await asyncpg.connect(postgres_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        async with stores(postgres_dsn, schema) as (st,):
            opening = asyncio.create_task(st.open())
            await asyncio.sleep(0.3)
            assert not opening.done(), "migrated without taking the advisory lock"
            await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
            await within(5, opening)
            assert await st.get("missing") is None
    finally:
        await holder.close()


async def test_a_schema_from_a_newer_agentlog_is_refused(postgres_dsn: str, schema: str) -> None:
    async with stores(postgres_dsn, schema) as (st,):
        await st.open()
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(
            f"INSERT INTO \"{schema}\".agentlog_migrations (version, name) VALUES (999, 'future')"
        )
    finally:
        await conn.close()
    async with stores(postgres_dsn, schema) as (st,):
        with pytest.raises(StorageError, match="newer agentlog"):
            await st.open()


@pytest.mark.parametrize("bad", ['x"; DROP SCHEMA public; --', "1abc", "pg_toast", "a" * 64, ""])
def test_schema_name_must_be_an_identifier(bad: str) -> None:
    with pytest.raises(UsageError, match="schema name"):
        PostgresTaskStore("postgresql://u@h/db", schema=bad)


def test_detail_never_shows_the_password() -> None:
    st = PostgresTaskStore("postgresql://ann:s3cret@db.example:6543/agentlog")
    assert st.detail == "db.example:6543/agentlog"
    assert PostgresTaskStore("postgresql://ann@db.example/agentlog").detail == (
        "db.example:5432/agentlog"
    )
    assert PostgresTaskStore("postgresql://ann@[::1]:5433/x").detail == "[::1]:5433/x"


# ---------------------------------------------------------------- pool and concurrency


async def test_pool_stays_within_pool_max(postgres_dsn: str, schema: str) -> None:
    async with stores(postgres_dsn, schema, pool_min=1, pool_max=2) as (st,):
        await st.apply_events([e(EventKind.RUN_START, f"r{i}", T0 + i) for i in range(50)])
        pages = await asyncio.gather(*(st.list(TaskFilter(), limit=10) for _ in range(30)))
        assert all(len(p.tasks) == 10 for p in pages)
        conn = await asyncpg.connect(postgres_dsn)
        try:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                f"agentlog-{st.instance_id}",
            )
        finally:
            await conn.close()
        assert 1 <= n <= 2


async def test_two_instances_writing_the_same_runs_lose_nothing(
    postgres_dsn: str, schema: str
) -> None:
    async with stores(postgres_dsn, schema, 2) as (a, b):
        await a.open()
        rng = random.Random(5)

        def batch() -> list[AgentEvent]:
            events = [e(EventKind.LLM_CALL, f"r{i:02d}", T0 + i, input_tokens=1) for i in range(40)]
            rng.shuffle(events)
            return events

        await asyncio.gather(*(st.apply_events(batch()) for st in (a, b) for _ in range(10)))
        for i in range(40):
            t = await a.get(f"r{i:02d}")
            assert t is not None and (t.step_count, t.input_tokens) == (20, 20)


# ---------------------------------------------------------------- live updates


async def test_a_triage_on_one_instance_reaches_another_within_a_second(
    postgres_dsn: str, schema: str
) -> None:
    async with stores(postgres_dsn, schema, 2) as (a, b):
        await a.apply_events([e(EventKind.RUN_START, "r1", T0), e(EventKind.RUN_START, "r2", T0)])
        feed = b.subscribe()
        assert await within(5, anext(feed)) == []  # listening from now on
        started = time.perf_counter()
        await a.set_triage("r1", TriageState.ACKED, by="ann")
        assert await within(1.0, anext(feed)) == ["r1"]
        assert time.perf_counter() - started < 1.0
        seen = await b.get("r1")
        assert seen is not None and (seen.triage, seen.triage_by) == (TriageState.ACKED, "ann")

        await a.set_status("r2", "cancelled")
        assert await within(1.0, anext(feed)) == ["r2"]
        await a.apply_events([e(EventKind.STEP, "r3", T0)], tenant="elsewhere")  # not b's tenant
        await a.apply_events([e(EventKind.STEP, "r4", T0), e(EventKind.STEP, "r1", T0)])
        assert await within(1.0, anext(feed)) == ["r1", "r4"]
        await a.set_triage("r1", TriageState.ACKED, by="ann")  # no change: nothing sent
        await b.set_triage("r2", TriageState.IGNORED, by="bob")  # b's own change: not echoed
        await a.set_triage("r2", TriageState.NEW, by="ann")
        assert await within(1.0, anext(feed)) == ["r2"]
        await feed.aclose()


async def test_large_batches_are_announced_in_several_notifications(
    postgres_dsn: str, schema: str
) -> None:
    async with stores(postgres_dsn, schema, 2) as (a, b):
        await a.open()
        feed = b.subscribe()
        assert await within(5, anext(feed)) == []
        ids = [f"run-{i:05d}-{'x' * 30}" for i in range(1500)]  # ~60 kB of ids
        await a.apply_events([e(EventKind.STEP, run, T0) for run in ids])
        got: set[str] = set()
        while len(got) < len(ids):
            got.update(await within(2, anext(feed)))  # type: ignore[arg-type]
        assert got == set(ids)
        await feed.aclose()


async def test_subscriber_reconnects_after_losing_its_connection(
    postgres_dsn: str, schema: str
) -> None:
    async with stores(postgres_dsn, schema, 2) as (a, b):
        await a.apply_events([e(EventKind.RUN_START, "r1", T0)])
        feed = b.subscribe()
        assert await within(5, anext(feed)) == []
        admin = await asyncpg.connect(postgres_dsn)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                f"agentlog-listen-{b.instance_id}",
            )
        finally:
            await admin.close()
        assert killed == 1
        assert await within(5, anext(feed)) == []  # resync: changes meanwhile may be missed
        await a.set_triage("r1", TriageState.RESOLVED, by="ann")
        assert await within(1.0, anext(feed)) == ["r1"]
        await feed.aclose()


async def test_subscriber_notices_a_silent_server_and_resubscribes(
    postgres_dsn: str, schema: str, proxy: Proxy
) -> None:
    async with (
        stores(postgres_dsn, schema) as (a,),
        stores(
            dsn_via(postgres_dsn, proxy.port),
            schema,
            connect_timeout_s=0.5,
            command_timeout_s=0.3,
            listen_keepalive_s=0.3,
        ) as (b,),
    ):
        await a.apply_events([e(EventKind.RUN_START, "r1", T0)])
        feed = b.subscribe()
        assert await within(5, anext(feed)) == []
        waiting = asyncio.create_task(anext(feed))  # a consumer waits for news all along
        proxy.freeze()  # the listening connection hears nothing now, not even a close
        await asyncio.sleep(1.0)  # its keepalive query times out; reconnecting times out
        assert not waiting.done()
        proxy.thaw()
        assert await within(5, waiting) == []  # back, and told to resync
        await a.set_triage("r1", TriageState.ACKED, by="ann")
        assert await within(1.0, anext(feed)) == ["r1"]
        await feed.aclose()


async def test_closing_the_store_ends_its_subscriptions(postgres_dsn: str, schema: str) -> None:
    async with stores(postgres_dsn, schema) as (st,):
        feed = st.subscribe()
        assert await within(5, anext(feed)) == []
        waiting = asyncio.create_task(anext(feed))
        await asyncio.sleep(0.05)
        await st.close()
        with pytest.raises(StopAsyncIteration):
            await within(2, waiting)
        with pytest.raises(StorageError, match="closed"):
            await st.list(TaskFilter())


# ---------------------------------------------------------------- faults


async def test_a_refusing_server_is_service_unavailable_in_plain_words(postgres_dsn: str) -> None:
    port = closed_port()
    st = PostgresTaskStore(f"postgresql://postgres:s3cret@127.0.0.1:{port}/test")
    with pytest.raises(ServiceUnavailable) as info:
        await st.open()
    message = str(info.value)
    assert f"PostgreSQL at 127.0.0.1:{port} refused the connection" in message
    assert "postgres.dsn / DATABASE_URL" in message
    assert "s3cret" not in message
    with pytest.raises(ServiceUnavailable, match="refused"):
        await st.list(TaskFilter())  # every call retries, and says the same
    health = await st.health()
    assert (health.kind, health.state, health.detail) == (
        "postgres",
        HealthState.DOWN,
        f"127.0.0.1:{port}/test",
    )
    assert "refused" in health.reason and health.since > 0
    await st.close()


async def test_a_server_that_accepts_and_never_answers_times_out(postgres_dsn: str) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept, read nothing, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    st = PostgresTaskStore(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout_s=0.5)
    try:
        started = time.perf_counter()
        with pytest.raises(ServiceUnavailable) as info:
            await st.open()
        elapsed = time.perf_counter() - started
        assert elapsed < 1.5, f"took {elapsed:.2f} s"
        assert f"PostgreSQL at 127.0.0.1:{port} did not answer within 0.5 s" in str(info.value)
        assert "postgres.dsn / DATABASE_URL" in str(info.value)
        started = time.perf_counter()
        health = await st.health()
        assert health.state is HealthState.DOWN and "did not answer" in health.reason
        assert time.perf_counter() - started < 1.5
    finally:
        await st.close()
        server.close()
        for writer in held:
            writer.close()


async def test_a_server_that_hangs_mid_session_times_out_and_recovers(
    postgres_dsn: str, schema: str, proxy: Proxy
) -> None:
    dsn = dsn_via(postgres_dsn, proxy.port)
    async with stores(dsn, schema, connect_timeout_s=0.5, command_timeout_s=0.5) as (st,):
        await st.apply_events([e(EventKind.RUN_START, "r", T0)])
        ok = await st.health()
        assert ok.state is HealthState.OK
        proxy.freeze()
        started = time.perf_counter()
        with pytest.raises(ServiceUnavailable, match=r"did not answer a query within 0\.5 s"):
            await st.list(TaskFilter())
        assert time.perf_counter() - started < 1.5
        down = await st.health()
        assert down.state is HealthState.DOWN and down.since >= ok.since
        proxy.thaw()
        page = await eventually(lambda: st.list(TaskFilter()))
        assert [t.run_id for t in page.tasks] == ["r"]  # type: ignore[attr-defined]
        assert (await st.health()).state is HealthState.OK


async def test_dropped_connections_and_a_restarted_server_recover_by_themselves(
    postgres_dsn: str, schema: str, proxy: Proxy
) -> None:
    dsn = dsn_via(postgres_dsn, proxy.port)
    async with stores(dsn, schema, connect_timeout_s=1, command_timeout_s=2) as (st,):
        await st.apply_events([e(EventKind.RUN_START, "r", T0)])
        proxy.cut()  # every connection dropped
        assert await eventually(lambda: st.get("r")) is not None
        await proxy.refuse()  # the server goes away
        with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{proxy.port}"):
            await st.set_triage("r", TriageState.ACKED, by="ann")
        assert (await st.health()).state is HealthState.DOWN
        await proxy.start()  # and comes back on the same port
        task = await eventually(lambda: st.set_triage("r", TriageState.ACKED, by="ann"))
        assert task.triage is TriageState.ACKED  # type: ignore[attr-defined]
        assert (await st.health()).state is HealthState.OK


@pytest.mark.parametrize(
    ("dsn", "error", "words"),
    [
        ("postgresql://nobody_here@127.0.0.1:5432/test", ServiceUnavailable, "rejected user"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_x", ServiceUnavailable, "no database"),
        ("postgresql://postgres@no-such-host.invalid:5432/test", ServiceUnavailable, "resolve"),
        ("http://127.0.0.1:5432/test", ConfigError, "not a usable PostgreSQL URL"),
    ],
)
async def test_connection_problems_name_the_setting(
    postgres_dsn: str, dsn: str, error: type[Exception], words: str
) -> None:
    st = PostgresTaskStore(dsn, connect_timeout_s=3)
    try:
        with pytest.raises(error, match=words) as info:
            await st.open()
        assert "postgres.dsn / DATABASE_URL" in str(info.value)
        assert (await st.health()).state is HealthState.DOWN
    finally:
        await st.close()


def test_notify_payloads_stay_under_the_limit() -> None:
    ids = [f"run-{i:05d}-{'x' * 30}" for i in range(1500)] + ["y" * 9000]
    payloads = _notify_payloads("abcd1234", "fake", ids)
    assert all(len(p.encode()) < 8000 for p in payloads)
    decoded = [orjson.loads(p) for p in payloads]
    assert [i for d in decoded if d["r"] for i in d["r"]] == ids[:-1]
    assert decoded[-1]["r"] is None  # the id too long to send: "something changed, refresh"
    assert {(d["i"], d["t"]) for d in decoded} == {("abcd1234", "fake")}
    assert _notify_payloads("abcd1234", "t" * 9000, ["r"]) == []
