"""The facade with Loki as its log source (the embedded store's Loki API over real loopback HTTP
stands in for Loki): the same CLI-level answers as on the embedded default."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from http_server import backend_at, run_server

from backend.config import load_config
from backend.demo.fleet import FleetOptions, run_fleet
from backend.facade import Backend
from backend.http.app import create_app
from backend.models import HealthState, PatternKind, RunStatus, StreamsResult, TaskFilter

NS = 1_000_000_000


async def test_loki_mode_matches_the_embedded_default(tmp_path: Path) -> None:
    loki_side = await backend_at(tmp_path / "loki")
    try:
        async with run_server(create_app(loki_side)) as srv:
            settings = load_config(
                None,
                env={},
                overrides={
                    "data_dir": str(tmp_path / "client"),
                    "log_source": "loki",
                    "loki.url": srv.url,
                },
            ).settings
            client = await Backend.open(settings)
            try:
                assert client.describe_source() == f"loki: {srv.url}"
                now = time.time_ns()
                await run_fleet(
                    client.push, FleetOptions(backfill_s=1800, seed=8, agents=3), clock=lambda: now
                )
                # runs were folded on this side from the lines it forwarded
                mine = await client.list_tasks(TaskFilter(statuses=(RunStatus.FAILED,)), limit=500)
                theirs = await loki_side.list_tasks(
                    TaskFilter(statuses=(RunStatus.FAILED,)), limit=500
                )
                assert mine.tasks and {t.run_id for t in mine.tasks} == {
                    t.run_id for t in theirs.tasks
                }
                # the same query gives the same lines through Loki's API
                q = '{agent="planner"} |= "timed out"'
                a = await client.query(q, now - 3600 * NS, now + NS, limit=1000)
                b = await loki_side.query(q, now - 3600 * NS, now + NS, limit=1000)
                assert isinstance(a, StreamsResult) and isinstance(b, StreamsResult)

                def lines(r: StreamsResult) -> list[str]:
                    return sorted(e.line for s in r.streams for e in s.entries)

                assert lines(a) == lines(b) and lines(a)
                # a run's logs and its summary
                run = mine.tasks[0]
                logs = await client.run_logs(run.run_id)
                assert logs and all(
                    orjson.loads(te.entry.line).get("run_id") == run.run_id
                    for te in logs
                    if te.entry.line.startswith("{")
                )
                summary = await client.summary(run.run_id)
                assert summary.offline and run.run_id in summary.text
                # failure patterns through the generic (read and mine) path
                report = await client.failure_patterns(now - 3600 * NS, now + NS)
                assert any(p.kind == PatternKind.ERROR for p in report.patterns)
                health = {h.kind: h.state for h in await client.health()}
                assert health.get("loki") in (HealthState.OK, HealthState.DEGRADED)
            finally:
                await client.close()
    finally:
        await loki_side.close()
