"""The embedded log store: push, log and metric queries, metadata endpoints, tail, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from backend.embedded.logstore import EmbeddedLogStore
from backend.errors import LogQLSyntaxError, LogQLUnsupportedError, QueryError, StorageError
from backend.models import (
    Direction,
    LogEntry,
    MatrixResult,
    ScalarResult,
    Stream,
    StreamsResult,
    TailBatch,
    VectorResult,
)

NS = 1_000_000_000
T0 = 1_790_000_000 * NS  # a fixed "now" (2026-09)


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> EmbeddedLogStore:
    s = await EmbeddedLogStore.open(tmp_path / "logs.sqlite3", clock=Clock(), max_line_bytes=1024)
    yield s  # type: ignore[misc]
    await s.close()


def entries(res: object) -> list[tuple[int, str]]:
    assert isinstance(res, StreamsResult)
    return [(e.ts, e.line) for s in res.streams for e in s.entries]


async def seed(store: EmbeddedLogStore) -> None:
    """Two agents, one line per second for 100 s; every 10th line of planner is a timeout."""
    planner = [
        LogEntry(
            T0 - (100 - i) * NS,
            f'{{"level":"{"error" if i % 10 == 0 else "info"}","msg":"'
            + ("tool search timed out after 30s" if i % 10 == 0 else f"step {i}")
            + '","n":'
            + str(i)
            + "}",
            {"run_id": f"run-{i // 50}"},
        )
        for i in range(100)
    ]
    coder = [LogEntry(T0 - (100 - i) * NS, f"level=info msg=compile n={i}") for i in range(100)]
    res = await store.push(
        [
            Stream({"agent": "planner", "env": "demo"}, planner),
            Stream({"agent": "coder", "env": "demo"}, coder),
        ]
    )
    assert res.accepted == 200


async def test_log_query_backward_limit_and_filter(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range('{agent="planner"} |= "timed out"', T0 - 200 * NS, T0, limit=3)
    got = entries(res)
    assert [ts for ts, _ in got] == [T0 - 10 * NS, T0 - 20 * NS, T0 - 30 * NS]
    assert all("timed out" in line for _, line in got)


async def test_log_query_forward_and_half_open_range(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range(
        '{agent="coder"}', T0 - 100 * NS, T0 - 97 * NS, limit=100, direction=Direction.FORWARD
    )
    # start <= ts < end
    assert [ts for ts, _ in entries(res)] == [T0 - 100 * NS, T0 - 99 * NS, T0 - 98 * NS]


async def test_limit_spans_streams_and_keeps_newest(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range('{env="demo"}', T0 - 200 * NS, T0, limit=4)
    got = entries(res)
    assert len(got) == 4
    assert sorted(ts for ts, _ in got) == [T0 - 2 * NS, T0 - 2 * NS, T0 - NS, T0 - NS]


async def test_json_parser_and_label_filter_and_metadata(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range(
        '{agent="planner"} | json | level="error" and n >= 50 | run_id="run-1"',
        T0 - 200 * NS,
        T0,
        limit=100,
    )
    assert isinstance(res, StreamsResult)
    got = entries(res)
    assert len(got) == 5  # n = 50, 60, 70, 80, 90
    labels = res.streams[0].labels
    assert (
        labels["run_id"] == "run-1" and labels["level"] == "error" and labels["agent"] == "planner"
    )


async def test_line_format_and_logfmt(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range(
        '{agent="coder"} | logfmt | n > 97 | line_format "{{.msg}} #{{.n}}"', T0 - 200 * NS, T0
    )
    assert sorted(line for _, line in entries(res)) == ["compile #98", "compile #99"]


async def test_regex_selector_and_negative_matchers(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range('{agent=~"plan.*", env!="prod"}', T0 - 200 * NS, T0, limit=1)
    assert len(entries(res)) == 1
    res = await store.query_range('{agent!~"plan.*", env="demo"}', T0 - 200 * NS, T0, limit=1)
    assert isinstance(res, StreamsResult) and res.streams[0].labels["agent"] == "coder"
    res = await store.query_range('{agent="nobody"}', T0 - 200 * NS, T0)
    assert entries(res) == []


async def test_metric_count_over_time_sum_by(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range(
        'sum by (agent) (count_over_time({env="demo"}[10s]))',
        T0 - 50 * NS,
        T0 - 30 * NS,
        step_ns=10 * NS,
    )
    assert isinstance(res, MatrixResult)
    by_agent = {s.metric["agent"]: s.values for s in res.series}
    assert set(by_agent) == {"planner", "coder"}
    assert by_agent["coder"] == [((T0 - k * NS) / NS, 10.0) for k in (50, 40, 30)]


async def test_metric_bucketed_equals_per_entry(store: EmbeddedLogStore) -> None:
    """The SQL-bucketed fast path and the per-entry path (forced by a pipeline stage that cannot be
    pushed into SQL) must agree."""
    await seed(store)
    fast = await store.query_range(
        'sum by (agent) (count_over_time({env="demo"} |= "1" [7s]))',
        T0 - 90 * NS,
        T0,
        step_ns=3 * NS,
    )
    slow = await store.query_range(
        'sum by (agent) (count_over_time({env="demo"} |~ "1" [7s]))',
        T0 - 90 * NS,
        T0,
        step_ns=3 * NS,
    )
    assert isinstance(fast, MatrixResult) and isinstance(slow, MatrixResult)
    assert [(s.metric, s.values) for s in fast.series] == [
        (s.metric, s.values) for s in slow.series
    ]
    assert fast.series


async def test_metric_without_grouping_keeps_structured_metadata(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_range('count_over_time({agent="planner"}[100s])', T0, T0, step_ns=NS)
    assert isinstance(res, MatrixResult)
    assert sorted(s.metric.get("run_id", "") for s in res.series) == ["run-0", "run-1"]
    # the window (T0-100s, T0] leaves out the oldest line, stamped T0-100s exactly
    assert sum(s.values[0][1] for s in res.series) == 99


async def test_rate_bytes_and_topk(store: EmbeddedLogStore) -> None:
    await seed(store)
    res = await store.query_instant('sum by (agent) (rate({env="demo"}[10s]))', T0)
    assert isinstance(res, VectorResult)
    # (T0-10s, T0] holds the 9 lines stamped T0-9s .. T0-1s: 0.9 lines/s
    assert {s.metric["agent"]: s.value for s in res.samples} == {"planner": 0.9, "coder": 0.9}
    res = await store.query_instant('sum(bytes_over_time({agent="coder"}[3s]))', T0)
    assert isinstance(res, VectorResult)
    assert res.samples[0].value == len("level=info msg=compile n=99") + len(
        "level=info msg=compile n=98"
    )
    res = await store.query_instant(
        'topk(1, sum by (agent) (count_over_time({env="demo"} |= "timed" [1h])))', T0
    )
    assert isinstance(res, VectorResult)
    assert [(s.metric, s.value) for s in res.samples] == [({"agent": "planner"}, 10.0)]
    res = await store.query_instant("1 + 1", T0)
    assert isinstance(res, ScalarResult) and res.value == 2.0


async def test_instant_log_query_is_refused(store: EmbeddedLogStore) -> None:
    with pytest.raises(QueryError, match="instant query"):
        await store.query_instant('{agent="planner"}', T0)


async def test_bad_queries_have_clear_errors(store: EmbeddedLogStore) -> None:
    with pytest.raises(LogQLSyntaxError) as err:
        await store.query_range('{agent="planner"', T0 - NS, T0)
    assert "line 1" in str(err.value) and "col" in str(err.value)
    with pytest.raises(LogQLUnsupportedError, match="pattern"):
        await store.query_range('{agent="planner"} | pattern "<a> <b>"', T0 - NS, T0)
    with pytest.raises(QueryError):
        await store.query_range('{agent=~".*"}', T0 - NS, T0)
    with pytest.raises(QueryError, match="before start"):
        await store.query_range('{agent="planner"}', T0, T0 - NS)
    with pytest.raises(QueryError, match="limit"):
        await store.query_range('{agent="planner"}', T0 - NS, T0, limit=0)
    with pytest.raises(QueryError, match="max entries limit"):
        await store.query_range('{agent="planner"}', T0 - NS, T0, limit=10**9)
    with pytest.raises(QueryError, match="11,000"):
        await store.query_range('count_over_time({agent="a"}[1m])', T0 - 86400 * NS, T0, step_ns=NS)


async def test_push_rejects_and_cleans_bad_entries(store: EmbeddedLogStore) -> None:
    res = await store.push(
        [
            Stream({}, [LogEntry(T0, "no labels")]),
            Stream({"bad-name": "x"}, [LogEntry(T0, "bad label")]),
            Stream(
                {"agent": "a"},
                [
                    LogEntry(T0 + 3600 * NS, "from the future"),
                    LogEntry(T0 - 30 * 86400 * NS, "older than retention"),
                    LogEntry(T0, "x" * 5000),
                    LogEntry(T0 + 1, "ctrl \x1b[31m red \x00 nul"),
                    LogEntry(T0 + 2, "bad utf8 \udcff kept"),
                    LogEntry(T0 + 3, "ok"),
                ],
            ),
            Stream({"agent": "b"}, []),
        ]
    )
    assert res.accepted == 4
    assert res.truncated == 1
    reasons = sorted(r.reason for r in res.rejected)
    assert len(reasons) == 4
    assert any("at least one label" in r for r in reasons)
    assert any("invalid label name" in r for r in reasons)
    assert any("future" in r for r in reasons)
    assert any("retention" in r for r in reasons)
    got = dict(entries(await store.query_range('{agent="a"}', T0 - NS, T0 + NS)))
    assert got[T0].startswith("x" * 900) and got[T0].endswith("[truncated 4016 bytes]")
    assert len(got[T0].encode()) <= 1024
    assert got[T0 + 1] == "ctrl \x1b[31m red \x00 nul"  # stored exactly; display escapes it
    assert got[T0 + 2] == "bad utf8 \\udcff kept"
    assert (await store.push([])).accepted == 0


async def test_exact_duplicates_are_dropped_same_ts_other_line_kept(
    store: EmbeddedLogStore,
) -> None:
    s = Stream({"agent": "a"}, [LogEntry(T0, "one"), LogEntry(T0, "two")])
    res, stored, _ = await store.push_detailed([s])
    assert res.accepted == 2 and len(stored) == 2
    res, stored, _ = await store.push_detailed(
        [Stream({"agent": "a"}, [LogEntry(T0, "one"), LogEntry(T0, "three")])]
    )
    assert (res.accepted, res.duplicates) == (1, 1)
    assert [te.entry.line for te in stored] == ["three"]
    got = entries(await store.query_range('{agent="a"}', T0, T0 + 1))
    assert sorted(line for _, line in got) == ["one", "three", "two"]


async def test_out_of_order_entries_are_kept_and_sorted(store: EmbeddedLogStore) -> None:
    await store.push([Stream({"agent": "a"}, [LogEntry(T0 - NS, "late")])])
    await store.push([Stream({"agent": "a"}, [LogEntry(T0 - 5 * NS, "earlier, pushed later")])])
    got = entries(
        await store.query_range('{agent="a"}', T0 - 10 * NS, T0, direction=Direction.FORWARD)
    )
    assert [line for _, line in got] == ["earlier, pushed later", "late"]


async def test_tenants_are_kept_apart(store: EmbeddedLogStore) -> None:
    await store.push([Stream({"agent": "a"}, [LogEntry(T0, "team one")])], tenant="one")
    await store.push([Stream({"agent": "a"}, [LogEntry(T0, "team two")])], tenant="two")
    got = entries(await store.query_range('{agent="a"}', T0, T0 + 1, tenant="two"))
    assert got == [(T0, "team two")]
    assert await store.labels(T0, T0 + 1, tenant="three") == []


async def test_labels_values_series(store: EmbeddedLogStore) -> None:
    await seed(store)
    assert await store.labels(T0 - 200 * NS, T0) == ["agent", "env"]
    assert await store.label_values("agent", T0 - 200 * NS, T0) == ["coder", "planner"]
    assert await store.label_values("agent", T0 - 200 * NS, T0, '{agent=~"c.*"}') == ["coder"]
    assert await store.series(['{agent="planner"}'], T0 - 200 * NS, T0) == [
        {"agent": "planner", "env": "demo"}
    ]
    # nothing in the window -> nothing listed
    assert await store.series([], T0, T0 + NS) == []


async def test_retention_deletes_old_entries(tmp_path: Path) -> None:
    clock = Clock()
    s = await EmbeddedLogStore.open(tmp_path / "r.sqlite3", clock=clock, retention_s=3600)
    try:
        await s.push(
            [Stream({"agent": "a"}, [LogEntry(T0 - 1800 * NS, "old"), LogEntry(T0, "new")])]
        )
        clock.now = T0 + 2000 * NS
        assert await s.apply_retention() == 1
        got = entries(await s.query_range('{agent="a"}', T0 - 7200 * NS, T0 + 1))
        assert got == [(T0, "new")]
    finally:
        await s.close()


async def collect(it: object, n: int, within: float = 5.0) -> list[TailBatch]:
    out: list[TailBatch] = []

    async def run() -> None:
        async for batch in it:  # type: ignore[attr-defined]
            out.append(batch)
            if sum(len(b.entries) for b in out) + sum(b.dropped for b in out) >= n:
                return

    await asyncio.wait_for(run(), within)
    return out


async def test_tail_backfills_then_follows_without_gaps(store: EmbeddedLogStore) -> None:
    await seed(store)
    it = store.tail('{agent="planner"} |= "timed out"', T0 - 200 * NS, limit=3)
    first = await collect(it, 3)
    assert [te.entry.ts for b in first for te in b.entries] == [
        T0 - 30 * NS,
        T0 - 20 * NS,
        T0 - 10 * NS,
    ]

    async def producer() -> None:
        for i in range(50):
            await store.push(
                [
                    Stream(
                        {"agent": "planner", "env": "demo"},
                        [LogEntry(T0 + i, f"tool search timed out after {i}s")],
                    ),
                    Stream({"agent": "coder", "env": "demo"}, [LogEntry(T0 + i, "noise")]),
                ]
            )

    task = asyncio.create_task(producer())
    live = await collect(it, 50)
    await task
    got = [te.entry.line for b in live for te in b.entries]
    assert got == [f"tool search timed out after {i}s" for i in range(50)]
    await it.aclose()  # type: ignore[attr-defined]


async def test_tail_sees_lines_written_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    reader = await EmbeddedLogStore.open(path, clock=Clock())
    writer = await EmbeddedLogStore.open(path, clock=Clock())
    try:
        it = reader.tail('{agent="a"}', T0)
        await writer.push([Stream({"agent": "a"}, [LogEntry(T0 + 1, "from elsewhere")])])
        got = await collect(it, 1)
        assert [te.entry.line for b in got for te in b.entries] == ["from elsewhere"]
        await it.aclose()  # type: ignore[attr-defined]
    finally:
        await reader.close()
        await writer.close()


async def test_tail_reports_drops_when_consumer_falls_behind(tmp_path: Path) -> None:
    s = await EmbeddedLogStore.open(tmp_path / "d.sqlite3", clock=Clock(), tail_buffer=100)
    try:
        it = s.tail('{agent="a"}', T0, limit=0)
        nxt = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0.05)  # the tail is following now
        # 300 entries arrive before the consumer reads again: more than its buffer of 100.
        await s.push([Stream({"agent": "a"}, [LogEntry(T0 + i, f"more {i}") for i in range(300)])])
        batches = [await asyncio.wait_for(nxt, 5)]
        left = 300 - len(batches[0].entries) - batches[0].dropped
        if left:
            batches += await collect(it, left)
        dropped = sum(b.dropped for b in batches)
        delivered = [te.entry.line for b in batches for te in b.entries]
        assert dropped == 200 and len(delivered) == 100
        assert delivered == [f"more {i}" for i in range(200, 300)]
        assert batches[0].dropped_from == T0 and batches[0].dropped_to == T0 + 199
        await it.aclose()
    finally:
        await s.close()


async def test_unreadable_database_is_a_storage_error(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match=str(bad)):
        await EmbeddedLogStore.open(bad)


async def test_locked_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    s = await EmbeddedLogStore.open(path, clock=Clock(), busy_timeout_ms=100)
    other = sqlite3.connect(path, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="locked"):
            await s.push([Stream({"agent": "a"}, [LogEntry(T0, "x")])])
    finally:
        other.rollback()
        other.close()
        await s.close()


async def test_full_disk_is_a_storage_error_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """SQLite's max_page_count stands in for a full disk: the push that does not fit fails as a
    whole with a clear StorageError, and every entry acknowledged before stays readable."""
    path = tmp_path / "full.sqlite3"
    s = await EmbeddedLogStore.open(path, clock=Clock(), max_line_bytes=10_000)
    try:
        acked = 0
        await s._db.write(lambda c: c.execute("PRAGMA max_page_count = 200"), transaction=False)
        with pytest.raises(StorageError, match="full"):
            for i in range(1000):
                batch = [
                    LogEntry(T0 - NS + i * 100 + k, f"{i}-{k} " + "x" * 2000) for k in range(10)
                ]
                res = await s.push([Stream({"agent": "a"}, batch)])
                acked += res.accepted
        assert acked > 0
        got = entries(await s.query_range('{agent="a"}', T0 - 2 * NS, T0 + NS, limit=100_000))
        assert len(got) == acked
    finally:
        await s.close()
