"""The Loki adapter (backend.loki.LokiLogSource) against the embedded store's Loki API over real
loopback HTTP: every method answers as the embedded store called directly; paging past a small
max_entries_per_query; long ranges split; tenants; errors; the tail and its reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from http_server import RunningServer, backend_at, run_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from tcp_proxy import TcpProxy

from backend.config import LokiSettings
from backend.errors import LogQLSyntaxError, QueryError, ServiceUnavailable
from backend.facade import Backend
from backend.http.app import TailLimits, create_app
from backend.loki import LokiLogSource
from backend.loki.client import fmt_ns
from backend.models import (
    Direction,
    HealthState,
    LogEntry,
    MatrixResult,
    QueryResult,
    ScalarResult,
    Stream,
    StreamsResult,
    TailBatch,
    TailEntry,
    VectorResult,
)

NS = 1_000_000_000
STREAMS = [
    {"agent": "a", "level": "info"},
    {"agent": "a", "level": "error"},
    {"agent": "b", "level": "info"},
    {"agent": "c", "level": "warn"},
]


# ---------------------------------------------------------------------- helpers


def whole_second(ns: int) -> int:
    return ns // NS * NS


def dataset(base: int, n: int = 90, spacing_ns: int = NS // 4) -> list[Stream]:
    """`n` entries over the four streams; about five share each timestamp (within and across
    streams), every other one carries structured metadata."""
    out = [Stream(dict(labels), []) for labels in STREAMS]
    for i in range(n):
        ts = base + (i // 5) * spacing_ns
        line = f'{{"msg":"m{i}","run_id":"r{i % 5}","n":{i}}}'
        meta = {"trace_id": f"t{i % 3}"} if i % 2 else {}
        out[i % 4].entries.append(LogEntry(ts, line, meta))
    return out


def norm(res: QueryResult) -> Any:
    """A result as comparable data: streams and series in a fixed order, entries in the order
    returned, NaN made comparable, stats left out (timings differ)."""

    def f(v: float) -> Any:
        return "NaN" if math.isnan(v) else v

    if isinstance(res, StreamsResult):
        return sorted(
            (
                sorted(s.labels.items()),
                [(e.ts, e.line, sorted(e.metadata.items())) for e in s.entries],
            )
            for s in res.streams
        )
    if isinstance(res, MatrixResult):
        return sorted(
            (sorted(s.metric.items()), [(t, f(v)) for t, v in s.values]) for s in res.series
        )
    if isinstance(res, VectorResult):
        return sorted((sorted(s.metric.items()), s.ts, f(s.value)) for s in res.samples)
    assert isinstance(res, ScalarResult)
    return ("scalar", res.ts, f(res.value))


def flat(res: QueryResult) -> list[tuple[int, str, str]]:
    assert isinstance(res, StreamsResult)
    return [(e.ts, str(sorted(s.labels.items())), e.line) for s in res.streams for e in s.entries]


def settings(url: str, **kw: Any) -> LokiSettings:
    base: dict[str, Any] = {"url": url, "timeout": 5, "max_entries_per_query": 7}
    base.update(kw)
    return LokiSettings(**base)


async def collect_tail(
    it: AsyncIterator[TailBatch], until: Callable[[list[TailEntry]], bool], within: float = 15.0
) -> tuple[list[TailEntry], list[TailBatch]]:
    got: list[TailEntry] = []
    batches: list[TailBatch] = []
    async with asyncio.timeout(within):
        async for batch in it:
            batches.append(batch)
            got.extend(batch.entries)
            if until(got):
                break
    return got, batches


def entry_keys(entries: list[TailEntry]) -> list[tuple[int, str]]:
    return [(te.entry.ts, te.entry.line) for te in entries]


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    be = await backend_at(tmp_path)
    yield be
    await be.close()


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[RunningServer]:
    async with run_server(create_app(backend)) as srv:
        yield srv


@pytest.fixture
def base() -> int:
    return whole_second(time.time_ns()) - 30 * 60 * NS


@pytest.fixture
async def loaded(backend: Backend, base: int) -> Backend:
    await backend.push(dataset(base))
    return backend


@pytest.fixture
async def loki(server: RunningServer) -> AsyncIterator[LokiLogSource]:
    src = LokiLogSource(settings(server.url))
    yield src
    await src.close()


# ---------------------------------------------------------------------- log queries

LOG_QUERIES = [
    '{agent="a"}',
    '{agent=~"a|b"}',
    '{level=~".+"} |= "m1"',
    '{agent=~".+"} | json | n > 40',
    '{agent="c"} | line_format "{{.msg}} {{.run_id}}"',
    '{agent=~".+"} | trace_id="t1"',
]


@pytest.mark.parametrize("direction", [Direction.BACKWARD, Direction.FORWARD])
async def test_log_queries_match_the_embedded_store(
    loaded: Backend, loki: LokiLogSource, base: int, direction: Direction
) -> None:
    start, end = base - NS, base + 60 * NS
    for query in LOG_QUERIES:
        for limit in (1, 6, 7, 8, 14, 1000):
            want = await loaded.logs.query_range(
                query, start, end, limit=limit, direction=direction
            )
            got = await loki.query_range(query, start, end, limit=limit, direction=direction)
            assert norm(got) == norm(want), (query, limit)


async def test_structured_metadata_comes_back_apart(loaded: Backend, loki: LokiLogSource) -> None:
    """The adapter asks for categorized labels, so metadata lands in LogEntry.metadata and the
    label sets are still Loki's merged ones (as the embedded store answers)."""
    now = time.time_ns()
    res = await loki.query_range('{agent="a"} | trace_id="t1"', now - 3600 * NS, now, limit=5)
    assert isinstance(res, StreamsResult) and res.streams
    for s in res.streams:
        assert s.labels["trace_id"] == "t1"
        assert all(e.metadata == {"trace_id": "t1"} for e in s.entries)


@pytest.mark.parametrize("direction", [Direction.BACKWARD, Direction.FORWARD])
async def test_paging_past_the_entries_limit_returns_each_entry_once(
    backend: Backend, loki: LokiLogSource, base: int, direction: Direction
) -> None:
    """max_entries_per_query is 7; 3-way timestamp ties fall on page boundaries everywhere."""
    streams = [Stream({"agent": "p", "k": str(k)}, []) for k in range(2)]
    for i in range(200):
        streams[i % 2].entries.append(LogEntry(base + (i // 3) * 1000, f"line {i}"))
    await backend.push(streams)
    query, start, end = '{agent="p"}', base, base + NS
    sent = loki.requests_sent
    res = await loki.query_range(query, start, end, limit=10_000, direction=direction)
    got = flat(res)
    assert len(got) == 200 and len(set(got)) == 200
    assert loki.requests_sent - sent >= 200 // 7
    want = await backend.logs.query_range(query, start, end, limit=10_000, direction=direction)
    assert norm(res) == norm(want)
    for limit in (20, 21, 22, 99, 150):
        want = await backend.logs.query_range(query, start, end, limit=limit, direction=direction)
        res = await loki.query_range(query, start, end, limit=limit, direction=direction)
        assert norm(res) == norm(want), limit
        assert sum(len(s.entries) for s in res.streams) == limit  # type: ignore[union-attr]


async def test_a_lower_entries_limit_at_loki_is_learned_and_paged(
    loaded: Backend, server: RunningServer, base: int
) -> None:
    """loki.max_entries_per_query above what the server allows (the embedded store: 100,000):
    the 400 names Loki's limit; the adapter adopts it and pages instead of failing."""
    loki = LokiLogSource(settings(server.url, max_entries_per_query=1_000_000))
    try:
        q, start, end = '{agent=~".+"}', base - NS, base + 60 * NS
        got = await loki.query_range(q, start, end, limit=150_000)
        assert loki.max_entries_per_query == 100_000
        assert norm(got) == norm(await loaded.logs.query_range(q, start, end, limit=100_000))
    finally:
        await loki.close()


async def test_more_entries_in_one_nanosecond_than_a_page_holds(
    backend: Backend, loki: LokiLogSource, base: int
) -> None:
    """Loki has no cursor: past a page of entries sharing one ns, paging cannot reach the rest of
    that ns. It moves on (no loop, no duplicate) and still returns everything older."""
    await backend.push(
        [
            Stream({"agent": "tie"}, [LogEntry(base + 5, f"same ns {i}") for i in range(10)]),
            Stream({"agent": "tie"}, [LogEntry(base + 1, f"older {i}") for i in range(3)]),
        ]
    )
    res = await loki.query_range('{agent="tie"}', base, base + NS, limit=100)
    got = flat(res)
    assert len(got) == len(set(got))
    assert sum(1 for _ts, _l, line in got if line.startswith("same ns")) == 7
    assert sum(1 for _ts, _l, line in got if line.startswith("older")) == 3


async def test_long_ranges_are_split_and_answer_the_same(
    backend: Backend, server: RunningServer
) -> None:
    now = whole_second(time.time_ns())
    start = now - 5 * 3600 * NS
    streams = [Stream({"agent": a, "level": "info"}, []) for a in ("a", "b", "c")]
    for i in range(600):  # one line every 30 s for five hours
        streams[i % 3].entries.append(LogEntry(start + i * 30 * NS + i, f"tick {i} err" * (i % 2)))
    await backend.push(streams)
    loki = LokiLogSource(settings(server.url, split_interval="1h", max_parallel=2))
    try:
        end = now
        for direction in (Direction.BACKWARD, Direction.FORWARD):
            for limit in (5, 100, 250, 5000):
                q = '{agent=~".+"} |= "tick"'
                want = await backend.logs.query_range(
                    q, start, end, limit=limit, direction=direction
                )
                sent = loki.requests_sent
                got = await loki.query_range(q, start, end, limit=limit, direction=direction)
                assert norm(got) == norm(want), (direction, limit)
                if limit == 5000:
                    assert loki.requests_sent - sent >= 5  # split into hours
        for q, step in [
            ('sum by (agent) (count_over_time({agent=~".+"}[10m]))', 300 * NS),
            ('topk(1, sum by (agent) (rate({agent=~".+"} |= "err" [30m])))', 120 * NS),
            ('count_over_time({agent="a"}[1m])', 60 * NS),
            ('sum(count_over_time({agent=~".+"}[5m])) / 0', 900 * NS),
        ]:
            want = await backend.logs.query_range(q, start, end, step_ns=step)
            sent = loki.requests_sent
            got = await loki.query_range(q, start, end, step_ns=step)
            assert isinstance(got, MatrixResult)
            assert norm(got) == norm(want), q
            assert loki.requests_sent - sent >= 5
        # default step (Loki's): computed before splitting, so the grid is the same
        q = 'sum(count_over_time({agent=~".+"}[5m]))'
        assert norm(await loki.query_range(q, start, end)) == norm(
            await backend.logs.query_range(q, start, end)
        )
        with pytest.raises(QueryError, match="11,000 points"):
            await loki.query_range(q, start, end, step_ns=NS)
    finally:
        await loki.close()


async def test_metric_results_parse_nan_and_infinities(
    loaded: Backend, loki: LokiLogSource, base: int
) -> None:
    start, end = base, base + 30 * NS
    for q in [
        'sum(count_over_time({agent="a"}[10s])) / 0',
        '(sum(count_over_time({agent="a"}[10s])) - sum(count_over_time({agent="a"}[10s]))) / 0',
        'sum by (level) (rate({agent=~".+"}[5s]))',
        '-1 * sum(count_over_time({agent="b"}[10s])) / 0',
    ]:
        want = await loaded.logs.query_range(q, start, end, step_ns=5 * NS)
        got = await loki.query_range(q, start, end, step_ns=5 * NS)
        assert norm(got) == norm(want), q
    inf = await loki.query_range(
        'sum(count_over_time({agent="a"}[10s])) / 0', start, end, step_ns=5 * NS
    )
    assert isinstance(inf, MatrixResult) and math.isinf(inf.series[0].values[-1][1])


async def test_instant_queries(loaded: Backend, loki: LokiLogSource, base: int) -> None:
    at = base + 30 * NS
    for q in [
        'sum by (agent) (count_over_time({agent=~".+"}[1m]))',
        'topk(2, sum by (level) (count_over_time({agent=~".+"} | json | n > 10 [1m])))',
        "2 * 3",
    ]:
        want = await loaded.logs.query_instant(q, at)
        got = await loki.query_instant(q, at)
        assert type(got) is type(want)
        assert norm(got) == norm(want), q


async def test_instant_log_questions_go_through_query_range(
    loaded: Backend, loki: LokiLogSource, base: int
) -> None:
    """Loki 3.2+ refuses a log query on /query; the adapter asks query_range for the hour up to
    and including `time`."""
    at = base + 10 * NS
    got = await loki.query_instant('{agent="a"}', at, limit=1000)
    want = await loaded.logs.query_range('{agent="a"}', at - 3600 * NS, at + 1, limit=1000)
    assert isinstance(got, StreamsResult) and norm(got) == norm(want)
    with pytest.raises(QueryError, match="instant query"):
        await loaded.logs.query_instant('{agent="a"}', at)  # what /query itself would say


async def test_labels_values_and_series(loaded: Backend, loki: LokiLogSource, base: int) -> None:
    start, end = base - NS, base + 60 * NS
    emb = loaded.logs
    assert await loki.labels(start, end) == await emb.labels(start, end)
    sel = '{agent="c"}'
    assert await loki.labels(start, end, sel) == await emb.labels(start, end, sel)
    assert await loki.label_values("agent", start, end) == ["a", "b", "c"]
    assert await loki.label_values("level", start, end, '{agent="a"}') == await emb.label_values(
        "level", start, end, '{agent="a"}'
    )
    assert await loki.label_values("nope", start, end) == []
    for sels in ([], ["{}"], ['{agent="a"}'], ['{agent="a"}', '{level="warn"}']):
        got = await loki.series(sels, start, end)
        want = await emb.series(sels, start, end)
        assert sorted(map(str, got)) == sorted(map(str, want)), sels
    # outside the window: nothing (data omitted by the API -> [])
    assert await loki.labels(base - 20 * 60 * NS, base - 10 * 60 * NS) == []


async def test_tenants_are_kept_apart(backend: Backend, server: RunningServer, base: int) -> None:
    loki = LokiLogSource(settings(server.url))
    t1 = LokiLogSource(settings(server.url, tenant="team-1"))
    try:
        r1 = await loki.push([Stream({"agent": "x"}, [LogEntry(base, "for one")])], tenant="team-1")
        r2 = await loki.push([Stream({"agent": "x"}, [LogEntry(base, "for two")])], tenant="team-2")
        assert r1.accepted == 1 and r2.accepted == 1
        q, start, end = '{agent="x"}', base, base + NS

        async def lines(src: LokiLogSource, tenant: str = "fake") -> list[str]:
            res = await src.query_range(q, start, end, tenant=tenant)
            return [line for _ts, _l, line in flat(res)]

        assert await lines(loki, "team-1") == ["for one"]
        assert await lines(loki, "team-2") == ["for two"]
        assert await lines(loki) == []  # the default tenant sees neither
        assert await lines(t1) == ["for one"]  # loki.tenant is the default
        assert await lines(t1, "team-2") == ["for two"]  # a call's tenant wins
        assert await loki.label_values("agent", start, end, tenant="team-2") == ["x"]
        assert await loki.label_values("agent", start, end) == []
        assert norm(await loki.query_range(q, start, end, tenant="team-1")) == norm(
            await backend.logs.query_range(q, start, end, tenant="team-1")
        )
    finally:
        await loki.close()
        await t1.close()


async def test_push_forwards_and_reports_rejections(
    backend: Backend, loki: LokiLogSource, base: int
) -> None:
    ok = await loki.push(
        [
            Stream(
                {"agent": "push"},
                [LogEntry(base, "one", {"run_id": "r1"}), LogEntry(base + 1, "two")],
            )
        ]
    )
    assert ok.accepted == 2 and not ok.rejected
    res = await backend.logs.query_range('{agent="push"}', base, base + NS, limit=10)
    assert isinstance(res, StreamsResult)
    got = sorted((e.ts, e.line, e.metadata) for s in res.streams for e in s.entries)
    assert got == [(base, "one", {"run_id": "r1"}), (base + 1, "two", {})]
    too_old = base - 30 * 86400 * NS
    entries = [LogEntry(too_old, "old"), LogEntry(base + 2, "new")]
    part = await loki.push([Stream({"agent": "push"}, entries)])
    assert part.accepted == 1
    assert len(part.rejected) == 1 and part.rejected[0].ts == too_old
    assert "retention" in part.rejected[0].reason or "old" in part.rejected[0].reason
    bad = await loki.push([Stream({}, [LogEntry(base, "no labels")])])
    assert bad.accepted == 0 and len(bad.rejected) == 1


async def test_parse_errors_carry_lokis_message(loaded: Backend, loki: LokiLogSource) -> None:
    now = time.time_ns()
    for q in ['{agent="a"', '{agent="a"} |~ "("', 'sum(rate({a="b"}[5m]) by', ""]:
        with pytest.raises(QueryError) as want:
            await loaded.logs.query_range(q, now - NS, now)
        with pytest.raises(QueryError) as got:
            await loki.query_range(q, now - NS, now)
        assert str(got.value) == str(want.value), q
        assert type(got.value) is type(want.value)
    with pytest.raises(LogQLSyntaxError) as err:
        await loki.query_range('{agent="a"} | json |', now - NS, now)
    assert err.value.line == 1 and err.value.col > 1
    with pytest.raises(QueryError, match="positive"):
        await loki.query_range('{agent="a"}', now - NS, now, limit=0)


def test_time_parameters_are_exact() -> None:
    assert fmt_ns(1_714_557_600_000_000_001) == "1714557600000000001"
    assert fmt_ns(5) == "1970-01-01T00:00:00.000000005Z"
    assert fmt_ns(0) == "1970-01-01T00:00:00.000000000Z"


# ---------------------------------------------------------------------- requests on the wire


@contextlib.asynccontextmanager
async def stand_in(routes: list[Route]) -> AsyncIterator[RunningServer]:
    """A small real HTTP server that misbehaves on purpose (statuses a healthy store never
    sends), for the retry paths."""
    async with run_server(Starlette(routes=routes)) as srv:
        yield srv


async def test_headers_auth_and_tenant_on_the_wire() -> None:
    seen: list[dict[str, str]] = []

    async def labels(request: Request) -> Response:
        seen.append(dict(request.headers))
        return JSONResponse({"status": "success", "data": ["agent"]})

    async with stand_in([Route("/loki/api/v1/labels", labels)]) as srv:
        basic = LokiLogSource(settings(srv.url, username="ops", password="s3cret", tenant="t-9"))
        bearer = LokiLogSource(settings(srv.url, bearer_token="tok"))
        try:
            assert await basic.labels(0, NS) == ["agent"]
            assert await basic.labels(0, NS, tenant="other") == ["agent"]
            assert await bearer.labels(0, NS) == ["agent"]
        finally:
            await basic.close()
            await bearer.close()
    assert seen[0]["authorization"].startswith("Basic ")
    assert seen[0]["x-scope-orgid"] == "t-9"
    assert seen[1]["x-scope-orgid"] == "other"
    assert seen[2]["authorization"] == "Bearer tok"
    assert "x-scope-orgid" not in seen[2]


async def test_429_backs_off_and_5xx_retries_then_succeeds() -> None:
    calls: list[float] = []
    body = {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": {"a": "b"}, "value": [1714557600, "+Inf"]}],
        },
    }

    async def query(request: Request) -> Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return PlainTextResponse("too many outstanding requests", 429, {"Retry-After": "1"})
        if len(calls) == 2:
            return PlainTextResponse("internal", 500)
        return JSONResponse(body)

    async with stand_in([Route("/loki/api/v1/query", query)]) as srv:
        loki = LokiLogSource(settings(srv.url))
        try:
            res = await loki.query_instant('sum(rate({a="b"}[1m]))', 1714557600 * NS)
        finally:
            await loki.close()
    assert isinstance(res, VectorResult) and math.isinf(res.samples[0].value)
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.9  # Retry-After honoured


async def test_persistent_5xx_becomes_service_unavailable_in_plain_words() -> None:
    async def query(request: Request) -> Response:
        return PlainTextResponse("querier unavailable", 503)

    async with stand_in([Route("/loki/api/v1/query_range", query)]) as srv:
        loki = LokiLogSource(settings(srv.url))
        try:
            t0 = time.monotonic()
            with pytest.raises(ServiceUnavailable) as err:
                await loki.query_range('{a="b"}', 0, NS)
            assert time.monotonic() - t0 < 5
        finally:
            await loki.close()
    text = str(err.value)
    assert srv.url in text and "loki.url" in text and "LOKI_URL" in text and "503" in text


# ---------------------------------------------------------------------- tail


async def test_tail_backfills_then_follows(
    backend: Backend, loki: LokiLogSource, base: int
) -> None:
    await backend.push([Stream({"agent": "t"}, [LogEntry(base + i, f"old {i}") for i in range(5)])])
    it = loki.tail('{agent="t"}', base - NS, limit=3)
    try:
        got, _ = await collect_tail(it, lambda g: len(g) >= 3)
        assert [te.entry.line for te in got] == ["old 2", "old 3", "old 4"]
        now = time.time_ns()
        await backend.push([Stream({"agent": "t"}, [LogEntry(now, "live", {"run_id": "r7"})])])
        more, _ = await collect_tail(it, lambda g: len(g) >= 1)
        assert more[0].entry.line == "live" and more[0].entry.metadata == {"run_id": "r7"}
        assert more[0].labels == {"agent": "t", "run_id": "r7"}
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_tail_of_a_metric_query_is_a_query_error(loki: LokiLogSource) -> None:
    with pytest.raises(QueryError):
        async for _ in loki.tail('count_over_time({a="b"}[1m])'):
            pass


async def pusher(backend: Backend, n: int, every: float, tag: str) -> list[tuple[int, str]]:
    """Push `n` lines, three per timestamp (so a reconnect lands among equal timestamps)."""
    sent = []
    ts = time.time_ns()
    for i in range(n):
        if i % 3 == 0:
            ts = time.time_ns()
        line = f"{tag} {i}"
        await backend.push([Stream({"agent": "live"}, [LogEntry(ts, line)])])
        sent.append((ts, line))
        await asyncio.sleep(every)
    return sent


async def test_tail_reconnects_after_a_cut_without_gap_or_duplicate(
    backend: Backend, server: RunningServer
) -> None:
    async with TcpProxy("127.0.0.1", server.port) as proxy:
        loki = LokiLogSource(settings(f"http://127.0.0.1:{proxy.port}"), backoff_initial=0.05)
        it = loki.tail('{agent="live"}', time.time_ns(), limit=1000)
        try:
            push = asyncio.create_task(pusher(backend, 150, 0.01, "cut"))
            got: list[TailEntry] = []

            async def consume() -> None:
                async for batch in it:
                    got.extend(batch.entries)
                    if len(got) >= 150:
                        return

            consumer = asyncio.create_task(consume())
            for _ in range(4):  # cut the WebSocket mid-stream, and once keep it down a while
                await asyncio.sleep(0.25)
                proxy.cut_all()
            await proxy.set_mode("refuse")
            await asyncio.sleep(0.4)
            await proxy.set_mode("pass")
            sent = await push
            async with asyncio.timeout(20):
                await consumer
            assert sorted(entry_keys(got)) == sorted(sent)
            assert len(set(entry_keys(got))) == len(got)
            assert loki.tail_reconnects >= 4
        finally:
            await it.aclose()  # type: ignore[attr-defined]
            await loki.close()


async def test_tail_cut_before_anything_came_still_misses_nothing(
    backend: Backend, server: RunningServer
) -> None:
    """Connected, nothing delivered yet, cut; more lines than the backfill `limit` arrive while
    it is away: all of them come (they are live lines, not backfill)."""
    async with TcpProxy("127.0.0.1", server.port) as proxy:
        loki = LokiLogSource(settings(f"http://127.0.0.1:{proxy.port}"), backoff_initial=0.05)
        it = loki.tail('{agent="live"}', time.time_ns(), limit=2)
        first = asyncio.create_task(anext(it))  # type: ignore[arg-type]
        try:
            for _ in range(100):
                if proxy.active:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            await proxy.set_mode("refuse")
            sent = await pusher(backend, 10, 0.0, "away")
            await proxy.set_mode("pass")
            got: list[TailEntry] = []
            async with asyncio.timeout(15):
                got.extend((await first).entries)
                while len(got) < 10:
                    got.extend((await anext(it)).entries)  # type: ignore[arg-type]
            assert sorted(entry_keys(got)) == sorted(sent)
        finally:
            first.cancel()
            await it.aclose()  # type: ignore[attr-defined]
            await loki.close()


async def test_tail_reconnects_on_max_duration_close(backend: Backend, base: int) -> None:
    """Loki closes every tail after tail_max_duration with 1011 "reached tail max duration
    limit": the adapter reconnects at once, from the last timestamp, losing and repeating
    nothing."""
    app = create_app(backend, tail_limits=TailLimits(max_duration_s=0.3))
    async with run_server(app) as srv:
        loki = LokiLogSource(settings(srv.url))
        it = loki.tail('{agent="live"}', time.time_ns(), limit=1000)
        try:
            push = asyncio.create_task(pusher(backend, 90, 0.02, "dur"))
            got, _ = await collect_tail(it, lambda g: len(g) >= 90, within=20)
            sent = await push
            assert sorted(entry_keys(got)) == sorted(sent)
            assert loki.tail_reconnects >= 3
            assert loki.tail_problem == ""
        finally:
            await it.aclose()  # type: ignore[attr-defined]
            await loki.close()


async def test_tail_reports_other_1011_closes_and_backs_off(backend: Backend) -> None:
    app = create_app(backend, tail_limits=TailLimits(max_per_tenant=0))
    async with run_server(app) as srv:
        loki = LokiLogSource(settings(srv.url), backoff_initial=0.05)
        it = loki.tail('{agent="x"}')
        task = asyncio.create_task(anext(it))  # type: ignore[arg-type]
        try:
            await asyncio.sleep(1.0)
            assert not task.done()  # still trying, not crashed
            assert "max concurrent tail requests" in loki.tail_problem
            reconnects = loki.tail_reconnects
            assert 2 <= reconnects < 15  # backing off, not spinning
            h = await loki.health()
            assert h.state == HealthState.DEGRADED and "max concurrent" in h.reason
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await it.aclose()  # type: ignore[attr-defined]
            await loki.close()


async def test_tail_reports_dropped_entries(backend: Backend, tmp_path: Path) -> None:
    """A reader slower than the store's tail buffer is told how many entries it missed."""
    be = await backend_at(tmp_path / "small", {"embedded": {"tail_buffer": 5}})
    try:
        async with run_server(create_app(be)) as srv:
            loki = LokiLogSource(settings(srv.url))
            it = loki.tail('{agent="d"}', time.time_ns(), limit=10)
            first = asyncio.create_task(anext(it))  # type: ignore[arg-type]
            await asyncio.sleep(0.5)  # connected and idle
            now = time.time_ns()
            await be.push([Stream({"agent": "d"}, [LogEntry(now + i, f"d{i}") for i in range(50)])])
            try:
                async with asyncio.timeout(10):
                    batch = await first
                    dropped = batch.dropped
                    seen = len(batch.entries)
                    while seen + dropped < 50:
                        batch = await anext(it)  # type: ignore[arg-type]
                        dropped += batch.dropped
                        seen += len(batch.entries)
                assert dropped > 0 and seen + dropped == 50
            finally:
                await it.aclose()  # type: ignore[attr-defined]
                await loki.close()
    finally:
        await be.close()


async def test_health_ok(loki: LokiLogSource) -> None:
    h = await loki.health()
    assert h.state == HealthState.OK and h.kind == "loki" and h.latency_ms is not None
    assert h.detail == loki.url
