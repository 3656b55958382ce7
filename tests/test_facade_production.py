"""The facade on the production engines: PostgreSQL tasks and the Redis cache level, two
instances sharing them, and a PostgreSQL that is down."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from backend.config import Settings, load_config
from backend.errors import ServiceUnavailable
from backend.facade import Backend
from backend.models import HealthState, LogEntry, Stream, TriageState

NS = 1_000_000_000


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = "t_" + uuid.uuid4().hex[:12]
    yield name
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def settings_for(tmp_path: Path, postgres_dsn: str, redis_url: str, schema: str) -> Settings:
    return load_config(
        None,
        env={},
        overrides={
            "data_dir": str(tmp_path),
            "tasks.store": "postgres",
            "postgres.dsn": postgres_dsn,
            "postgres.schema_name": schema,
            "redis.enabled": True,
            "redis.url": redis_url,
            "redis.key_prefix": f"agentlog-test-{schema}:",
        },
    ).settings


async def seed(b: Backend) -> None:
    now = time.time_ns()
    lines = [
        '{"event":"run.start","run_id":"r1","agent":"a","task":"t"}',
        '{"event":"error","level":"error","run_id":"r1","agent":"a",'
        '"error.type":"KeyError","error.message":"KeyError: x"}',
        '{"event":"run.end","run_id":"r1","agent":"a","status":"failed"}',
    ]
    entries = [LogEntry(now - 10 * NS + i, ln, {"run_id": "r1"}) for i, ln in enumerate(lines)]
    res = await b.push([Stream({"agent": "a"}, entries)])
    assert res.accepted == 3 and res.runs_touched == 1


async def test_two_instances_share_tasks_and_summaries(
    tmp_path: Path, postgres_dsn: str, redis_url: str, schema: str
) -> None:
    settings = settings_for(tmp_path, postgres_dsn, redis_url, schema)
    one = await Backend.open(settings)
    two = await Backend.open(settings)
    try:
        await seed(one)
        assert (await two.get_task("r1")).status == "failed"
        await one.set_triage("r1", TriageState.ACKED, by="alice")
        t = await two.get_task("r1")
        assert (t.triage, t.triage_by) == (TriageState.ACKED, "alice")

        first = await one.summary("r1")
        stats_before = {s.level: s for s in await two.cache_stats()}
        second = await two.summary("r1")
        stats_after = {s.level: s for s in await two.cache_stats()}
        assert second.text == first.text and second.input_hash == first.input_hash
        assert stats_after["redis"].hits == stats_before["redis"].hits + 1

        kinds = {h.kind: h.state for h in await one.health()}
        assert kinds["postgres"] == HealthState.OK and kinds["redis"] == HealthState.OK
    finally:
        await one.close()
        await two.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_postgres_down_at_start_is_a_health_state_not_a_crash(tmp_path: Path) -> None:
    dsn = f"postgresql://agentlog@127.0.0.1:{free_port()}/agentlog"
    settings = load_config(
        None,
        env={},
        overrides={"data_dir": str(tmp_path), "tasks.store": "postgres", "postgres.dsn": dsn},
    ).settings
    b = await Backend.open(settings)
    try:
        health = {h.kind: h for h in await b.health()}
        assert health["postgres"].state == HealthState.DOWN
        assert "127.0.0.1" in health["postgres"].reason or health["postgres"].reason
        with pytest.raises(ServiceUnavailable, match="postgres"):
            await b.set_triage("r1", TriageState.ACKED, by="bob")
        # logs still work without the task table
        res = await b.query('{agent="a"}', 0, time.time_ns())
        assert res.result_type == "streams"
    finally:
        await b.close()


async def test_pushes_while_postgres_is_away_reach_the_task_table_later(
    tmp_path: Path, postgres_dsn: str, schema: str
) -> None:
    """Lines pushed while PostgreSQL refuses connections are stored at once; their run events
    wait and are folded when it comes back. A triage meanwhile is refused in plain words."""
    from tcp_proxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    dsn = postgres_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = load_config(
        None,
        env={},
        overrides={
            "data_dir": str(tmp_path),
            "tasks.store": "postgres",
            "postgres.dsn": dsn,
            "postgres.schema_name": schema,
        },
    ).settings
    b = await Backend.open(settings)
    try:
        await proxy.set_mode("refuse")
        now = time.time_ns()
        line = '{"event":"run.start","run_id":"r9","agent":"a","task":"t"}'
        res = await b.push([Stream({"agent": "a"}, [LogEntry(now, line, {"run_id": "r9"})])])
        assert res.accepted == 1 and b.pending_events == 1
        with pytest.raises(ServiceUnavailable):
            await b.set_triage("r9", TriageState.ACKED, by="bob")
        await proxy.set_mode("pass")
        later = '{"event":"run.end","run_id":"r9","agent":"a","status":"succeeded"}'
        # the pool reconnects by itself; the next push folds what waited, in order
        await b.push([Stream({"agent": "a"}, [LogEntry(now + NS, later, {"run_id": "r9"})])])
        assert b.pending_events == 0
        task = await b.get_task("r9")
        assert (task.task, task.status) == ("t", "succeeded")
    finally:
        await b.close()
        await proxy.close()
