"""Analytics: exact figures on a small hand-made store, through the facade."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from backend.analytics import percentiles
from backend.config import load_config
from backend.errors import UsageError
from backend.facade import Backend
from backend.models import LogEntry, Stream

NS = 1_000_000_000


def test_percentiles_nearest_rank() -> None:
    p = percentiles(range(1, 101))
    assert p is not None and (p.count, p.p50, p.p95, p.p99) == (100, 50, 95, 99)
    assert percentiles([]) is None
    one = percentiles([7.0])
    assert one is not None and (one.p50, one.p99) == (7.0, 7.0)


def line(**fields: object) -> str:
    return orjson.dumps(fields).decode()


@pytest.fixture
async def backend(tmp_path: Path) -> Backend:
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    b = await Backend.open(settings)
    yield b  # type: ignore[misc]
    await b.close()


async def seed(b: Backend, now: int) -> None:
    """Current hour: 3 runs of agent a (2 succeed in 10 s and 20 s, 1 fails in 30 s), each with
    one llm.call; previous hour: 1 run of agent b that succeeded in 5 s."""
    info: list[LogEntry] = []
    errors: list[LogEntry] = []

    def run(rid: str, agent: str, start: int, dur_s: int, status: str, model: str) -> None:
        meta = {"run_id": rid}
        info.append(
            LogEntry(start, line(event="run.start", run_id=rid, agent=agent, task="t1"), meta)
        )
        info.append(
            LogEntry(
                start + NS,
                line(
                    event="llm.call",
                    run_id=rid,
                    agent=agent,
                    model=model,
                    input_tokens=100,
                    output_tokens=10,
                    cost_usd=0.5,
                    latency_ms=dur_s * 100,
                ),
                meta,
            )
        )
        if status == "failed":
            errors.append(
                LogEntry(
                    start + 2 * NS,
                    line(event="error", run_id=rid, agent=agent, level="error", msg="boom"),
                    meta,
                )
            )
        info.append(
            LogEntry(
                start + dur_s * NS,
                line(event="run.end", run_id=rid, agent=agent, status=status),
                meta,
            )
        )

    run("r1", "a", now - 1800 * NS, 10, "succeeded", "m1")
    run("r2", "a", now - 1700 * NS, 20, "succeeded", "m1")
    run("r3", "a", now - 1600 * NS, 30, "failed", "m2")
    run("r0", "b", now - 5400 * NS, 5, "succeeded", "m1")
    info.sort(key=lambda e: e.ts)
    res = await b.push(
        [
            Stream({"agent": "a", "level": "info"}, [e for e in info if '"agent":"a"' in e.line]),
            Stream({"agent": "b", "level": "info"}, [e for e in info if '"agent":"b"' in e.line]),
            Stream({"agent": "a", "level": "error"}, errors),
        ]
    )
    assert res.accepted == 13


async def test_overview_exact(backend: Backend) -> None:
    now = time.time_ns()
    await seed(backend, now)
    ov = await backend.overview(now - 3600 * NS, now)
    cur, prev = ov.current, ov.previous
    assert (cur.runs, cur.by_status["succeeded"], cur.by_status["failed"]) == (3, 2, 1)
    assert cur.success_rate == pytest.approx(2 / 3)
    assert (cur.input_tokens, cur.output_tokens, cur.cost_usd) == (300, 30, 1.5)
    assert (cur.error_lines, cur.log_lines) == (1, 10)
    assert cur.log_bytes > 0
    assert (prev.runs, prev.success_rate, prev.error_lines, prev.log_lines) == (1, 1.0, 0, 3)
    with pytest.raises(UsageError):
        await backend.overview(now, now)


async def test_performance_exact(backend: Backend) -> None:
    now = time.time_ns()
    await seed(backend, now)
    perf = await backend.performance(now - 3600 * NS, now, buckets=2)
    a = perf.duration_by_agent["a"]
    assert (a.count, a.p50, a.p95) == (3, 20.0, 30.0)
    assert "b" not in perf.duration_by_agent
    assert [(m.model, m.calls, m.input_tokens, m.cost_usd) for m in perf.models] == [
        ("m1", 2, 200, 1.0),
        ("m2", 1, 100, 0.5),
    ]
    m1 = perf.models[0].latency_ms
    assert m1 is not None and (m1.p50, m1.p99) == (1000.0, 2000.0)
    # runs started per hour, per half-hour bucket: none in the first half, 3 in the second
    assert [v for _, v in perf.runs_per_hour] == [0.0, 6.0]
