"""The caching proxy (backend.loki.CachedLogSource) in front of the Loki adapter, itself against the
embedded store's Loki API over real loopback HTTP: same answers, hits, normalised keys, single
flight, past vs recent lifetimes, the codec, stale answers while the upstream is down, and the
two-level cache on a real Redis."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from http_server import RunningServer, backend_at, run_server
from tcp_proxy import TcpProxy
from test_loki_adapter import collect_tail, dataset, norm, settings, whole_second

from backend.cache import MemoryCache
from backend.errors import QueryError, ServiceUnavailable
from backend.facade import Backend
from backend.http.app import create_app
from backend.loki import CachedLogSource, LokiLogSource
from backend.loki.cached import decode_result, encode_result, normalize_query, served_stale
from backend.models import (
    Direction,
    HealthState,
    LogEntry,
    MatrixResult,
    MatrixSeries,
    QueryResult,
    QueryStats,
    ScalarResult,
    Stream,
    StreamsResult,
    VectorResult,
    VectorSample,
)
from backend.redis_cache import RedisCache, TwoLevelCache

NS = 1_000_000_000


class FakeClock:
    """Monotonic seconds for MemoryCache, moved by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    be = await backend_at(tmp_path)
    yield be
    await be.close()


@pytest.fixture
def base() -> int:
    return whole_second(time.time_ns()) - 30 * 60 * NS


@pytest.fixture
async def loaded(backend: Backend, base: int) -> Backend:
    await backend.push(dataset(base))
    return backend


@pytest.fixture
async def server(loaded: Backend) -> AsyncIterator[RunningServer]:
    async with run_server(create_app(loaded)) as srv:
        yield srv


@pytest.fixture
async def loki(server: RunningServer) -> AsyncIterator[LokiLogSource]:
    src = LokiLogSource(settings(server.url, max_entries_per_query=5000))
    yield src
    await src.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cached(loki: LokiLogSource, clock: FakeClock) -> CachedLogSource:
    return CachedLogSource(loki, MemoryCache(clock=clock))


# ---------------------------------------------------------------------- hits and answers


async def test_every_method_answers_as_the_store_and_hits_the_second_time(
    loaded: Backend, cached: CachedLogSource, loki: LokiLogSource, base: int
) -> None:
    emb = loaded.logs
    start, end = base - NS, base + 60 * NS
    q_metric = 'sum by (agent) (count_over_time({agent=~".+"}[10s]))'
    step = 5 * NS
    m_start, m_end = start // step * step, end // step * step  # metric ranges: on the step grid
    calls = [
        (
            lambda src: src.query_range('{agent="a"} | json | n > 10', start, end, limit=7),
            None,
        ),
        (
            lambda src: src.query_range(
                '{agent=~".+"}', start, end, limit=20, direction=Direction.FORWARD
            ),
            None,
        ),
        (lambda src: src.query_range(q_metric, m_start, m_end, step_ns=step), None),
        (lambda src: src.query_instant(q_metric, base + 20 * NS), None),
        (lambda src: src.labels(start, end), None),
        (lambda src: src.label_values("level", start, end, '{agent="a"}'), None),
        (lambda src: src.series(['{agent="a"}', '{level="warn"}'], start, end), None),
    ]
    for call, _ in calls:
        want = await call(emb)
        sent = loki.requests_sent
        first = await call(cached)
        assert loki.requests_sent > sent
        sent = loki.requests_sent
        second = await call(cached)
        assert loki.requests_sent == sent  # a hit
        for got in (first, second):
            if isinstance(want, list):
                assert sorted(map(str, got)) == sorted(map(str, want))  # type: ignore[arg-type]
            else:
                assert norm(got) == norm(want)  # type: ignore[arg-type]
    stats = await cached.stats()
    assert stats[0].level == "memory" and stats[0].hits >= len(calls)
    assert cached.upstream_calls == len(calls)
    assert cached.max_entries_per_query == 5000


async def test_query_text_is_normalised(cached: CachedLogSource, base: int) -> None:
    start, end = base, base + 60 * NS
    variants = [
        '{agent="a"} |= "m1"',
        '{ agent = "a" }   |=   "m1"',
        "{agent=`a`} |= `m1`  # a comment",
        '{agent="a"}\n|= "m1"',
    ]
    results = [await cached.query_range(q, start, end) for q in variants]
    assert cached.upstream_calls == 1
    assert all(norm(r) == norm(results[0]) for r in results)
    # Different strings stay different; outside the parser's subset whitespace is collapsed,
    # but never inside quotes.
    assert normalize_query('{a="b"} |= "x  y"') != normalize_query('{a="b"} |= "x y"')
    adv = '{a="b"}   |>  "<_> x  y"'
    assert normalize_query(adv) == normalize_query('{a="b"} |> "<_> x  y"')
    assert normalize_query(adv) != normalize_query('{a="b"} |> "<_> x y"')


async def test_fifty_identical_concurrent_queries_make_one_upstream_call(
    cached: CachedLogSource, loki: LokiLogSource, base: int
) -> None:
    sent = loki.requests_sent
    q = '{agent=~".+"} | json | n > 5'
    results = await asyncio.gather(
        *(cached.query_range(q, base, base + 60 * NS, limit=30) for _ in range(50))
    )
    assert cached.upstream_calls == 1
    assert loki.requests_sent - sent == 1
    assert all(norm(r) == norm(results[0]) for r in results)


async def test_past_ranges_live_longer_than_ranges_touching_now(
    loaded: Backend, cached: CachedLogSource, clock: FakeClock, base: int
) -> None:
    now = time.time_ns()
    past = ('{agent="a"}', base - 10 * NS, base + 60 * NS)  # ended ~29 minutes ago
    recent = ('{agent="a"}', now - 3600 * NS, now)
    for q, s, e in (past, recent):
        await cached.query_range(q, s, e)
    assert cached.upstream_calls == 2
    clock.t += 11  # past the 10 s of a range touching now
    for q, s, e in (past, recent):
        await cached.query_range(q, s, e)
    assert cached.upstream_calls == 3  # only the recent one went upstream again
    clock.t += 3600  # past the hour of a range in the past
    await cached.query_range(*past)
    assert cached.upstream_calls == 4


async def test_sub_second_ranges_are_widened_then_cut_back_exactly(
    loaded: Backend, cached: CachedLogSource, base: int
) -> None:
    emb = loaded.logs
    q = '{agent=~".+"}'
    start, end = base + 1_300_000_000, base + 9_600_000_000  # not on whole seconds
    for direction in (Direction.BACKWARD, Direction.FORWARD):
        for limit in (3, 10, 1000):
            want = await emb.query_range(q, start, end, limit=limit, direction=direction)
            got = await cached.query_range(q, start, end, limit=limit, direction=direction)
            assert norm(got) == norm(want), (direction, limit)
    # Requests a few ms apart within one second share the widened entry.
    calls = cached.upstream_calls
    await cached.query_range(q, start + 1_000_000, end + 2_000_000, limit=1000)
    assert cached.upstream_calls == calls


async def test_metric_ranges_are_aligned_to_the_step(
    loaded: Backend, loki: LokiLogSource, clock: FakeClock, base: int
) -> None:
    emb = loaded.logs
    q = 'sum by (level) (count_over_time({agent=~".+"}[10s]))'
    step = 5 * NS
    origin = base // step * step + step  # a step boundary, so +1 s below stays in the same step
    start, end = origin + 1_234_000_000, origin + 41_987_000_000  # ms: Loki writes times so
    aligned = CachedLogSource(loki, MemoryCache(clock=clock))
    got = await aligned.query_range(q, start, end, step_ns=step)
    want = await emb.query_range(q, start // step * step, end // step * step, step_ns=step)
    assert norm(got) == norm(want)
    exact = CachedLogSource(loki, MemoryCache(clock=clock), align_metric_queries=False)
    assert norm(await exact.query_range(q, start, end, step_ns=step)) == norm(
        await emb.query_range(q, start, end, step_ns=step)
    )
    # a refresh a moment later shares the aligned entry
    await aligned.query_range(q, start + NS, end + NS, step_ns=step)
    assert aligned.upstream_calls == 1


async def test_errors_are_never_cached(cached: CachedLogSource, loki: LokiLogSource) -> None:
    now = time.time_ns()
    for _ in range(2):
        with pytest.raises(QueryError):
            await cached.query_range('{agent="a"', now - NS, now)
    assert cached.upstream_calls == 2


def test_codec_round_trips_every_result_type() -> None:
    results: list[QueryResult] = [
        StreamsResult(
            [
                Stream(
                    {"a": "b", "trace_id": "t"}, [LogEntry(1, 'x ü \u2028 "q"', {"trace_id": "t"})]
                ),
                Stream({"a": "c"}, [LogEntry(2**62, "", {}), LogEntry(3, "<&>", {})]),
            ],
            QueryStats(0.5, 10, 100, 3),
        ),
        StreamsResult([]),
        MatrixResult(
            [
                MatrixSeries({"l": "v"}, [(1714557600.0, 1.5), (1714557600.5, math.nan)]),
                MatrixSeries({}, [(1.0, math.inf), (2.0, -math.inf), (3.0, 1e-300)]),
            ]
        ),
        VectorResult([VectorSample({"x": "y"}, 1714557600.123, 0.1 + 0.2)]),
        ScalarResult(12.0, math.nan),
    ]
    for res in results:
        back = decode_result(encode_result(res))
        assert type(back) is type(res)
        assert repr(back) == repr(res)
        if isinstance(back, MatrixResult):
            assert all(isinstance(v, tuple) for s in back.series for v in s.values)


# ---------------------------------------------------------------------- stale answers


async def test_stale_results_are_served_while_the_upstream_is_down(
    loaded: Backend, server: RunningServer, clock: FakeClock, base: int
) -> None:
    async with TcpProxy("127.0.0.1", server.port) as proxy:
        loki = LokiLogSource(settings(f"http://127.0.0.1:{proxy.port}", timeout=2))
        cached = CachedLogSource(loki, MemoryCache(clock=clock))
        try:
            now = time.time_ns()
            q, start, end = '{agent="b"}', now - 3600 * NS, now
            fresh = await cached.query_range(q, start, end)
            assert not cached.last_served_stale and not served_stale()
            clock.t += 60  # the 10 s entry is gone; the last good one is kept
            await proxy.set_mode("refuse")
            t0 = time.monotonic()
            old = await cached.query_range(q, start, end)
            assert time.monotonic() - t0 < 3
            assert norm(old) == norm(fresh)
            assert cached.last_served_stale and served_stale() and cached.stale_served == 1
            h = await cached.health()
            assert h.state == HealthState.DEGRADED and "stale" in h.reason
            with pytest.raises(ServiceUnavailable):  # nothing kept for this one
                await cached.query_range('{agent="c"}', start, end)
            await proxy.set_mode("pass")
            again = await cached.query_range(q, start, end)
            assert not cached.last_served_stale and not served_stale()
            assert norm(again) == norm(fresh)
            assert (await cached.health()).state == HealthState.OK
        finally:
            await cached.close()


async def test_push_and_tail_pass_through(cached: CachedLogSource, loaded: Backend) -> None:
    now = time.time_ns()
    res = await cached.push([Stream({"agent": "through"}, [LogEntry(now, "via proxy")])])
    assert res.accepted == 1
    it = cached.tail('{agent="through"}', now - NS, limit=10)
    try:
        got, _ = await collect_tail(it, lambda g: len(g) >= 1)
        assert got[0].entry.line == "via proxy"
    finally:
        await it.aclose()  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- two levels, real Redis


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    pfx = f"agentlog-test:{uuid.uuid4().hex[:12]}:"
    yield pfx
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=pfx + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_one_instances_result_is_a_redis_hit_for_another(
    redis_url: str, prefix: str, loki: LokiLogSource, base: int, tmp_path: Path
) -> None:
    caches = [
        TwoLevelCache(
            MemoryCache(), RedisCache(redis_url, key_prefix=prefix), channel=prefix + "inv"
        )
        for _ in range(2)
    ]
    for c in caches:
        await c.start()
    one, two = (CachedLogSource(loki, c) for c in caches)
    try:
        q, start, end = '{agent=~".+"} | json | n > 3', base, base + 60 * NS
        first = await one.query_range(q, start, end, limit=25)
        sent = loki.requests_sent
        second = await two.query_range(q, start, end, limit=25)
        assert loki.requests_sent == sent and two.upstream_calls == 0
        assert norm(first) == norm(second)
        mem, red = await two.stats()
        assert (mem.level, red.level) == ("memory", "redis") and red.hits == 1
        await two.query_range(q, start, end, limit=25)
        mem, red = await two.stats()
        assert mem.hits == 1 and red.hits == 1  # then a memory hit
    finally:
        for c in caches:
            await c.close()


async def test_a_second_store_server_is_not_confused_with_the_first(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Tenants are part of the key: the same query for two tenants is two entries."""
    be = await backend_at(tmp_path / "t")
    try:
        now = time.time_ns()
        await be.push([Stream({"agent": "k"}, [LogEntry(now - NS, "one")])], tenant="t1")
        await be.push([Stream({"agent": "k"}, [LogEntry(now - NS, "two")])], tenant="t2")
        async with run_server(create_app(be)) as srv:
            cached = CachedLogSource(LokiLogSource(settings(srv.url)), MemoryCache(clock=clock))
            try:
                a = await cached.query_range('{agent="k"}', now - 60 * NS, now, tenant="t1")
                b = await cached.query_range('{agent="k"}', now - 60 * NS, now, tenant="t2")
                assert isinstance(a, StreamsResult) and isinstance(b, StreamsResult)
                assert [e.line for s in a.streams for e in s.entries] == ["one"]
                assert [e.line for s in b.streams for e in s.entries] == ["two"]
                assert cached.upstream_calls == 2
            finally:
                await cached.close()
    finally:
        await be.close()
