"""Faults between the Loki adapter and the store: a TcpProxy (tests/tcp_proxy.py) in front of the
embedded store's Loki API refuses, cuts, hangs or slows connections. Asserted: health states with
reasons, bounded waits, plain-words errors, recovery by itself, never an unhandled exception."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from http_server import RunningServer, backend_at, run_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from tcp_proxy import TcpProxy
from test_loki_adapter import entry_keys, pusher, settings

from backend.cache import MemoryCache
from backend.errors import ServiceUnavailable
from backend.facade import Backend
from backend.http.app import create_app
from backend.loki import CachedLogSource, LokiLogSource
from backend.models import HealthState, LogEntry, Stream, StreamsResult, TailEntry

NS = 1_000_000_000
TIMEOUT = 2.0  # loki.timeout in these tests
HEALTH_TIMEOUT = 1.0
SLOW = 0.3  # slow_threshold


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    be = await backend_at(tmp_path)
    now = time.time_ns()
    await be.push(
        [Stream({"agent": "f"}, [LogEntry(now - i * NS, f"line {i}") for i in range(20)])]
    )
    yield be
    await be.close()


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[RunningServer]:
    async with run_server(create_app(backend)) as srv:
        yield srv


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[TcpProxy]:
    async with TcpProxy("127.0.0.1", server.port) as p:
        yield p


@pytest.fixture
async def loki(proxy: TcpProxy) -> AsyncIterator[LokiLogSource]:
    src = LokiLogSource(
        settings(f"http://127.0.0.1:{proxy.port}", timeout=TIMEOUT),
        slow_threshold=SLOW,
        health_timeout=HEALTH_TIMEOUT,
    )
    yield src
    await src.close()


async def query(loki: LokiLogSource) -> StreamsResult:
    now = time.time_ns()
    res = await loki.query_range('{agent="f"}', now - 3600 * NS, now, limit=100)
    assert isinstance(res, StreamsResult)
    return res


def count(res: StreamsResult) -> int:
    return sum(len(s.entries) for s in res.streams)


async def timed_health(loki: LokiLogSource) -> tuple[HealthState, str, float]:
    t0 = time.monotonic()
    h = await loki.health()
    return h.state, h.reason, time.monotonic() - t0


async def assert_recovers(loki: LokiLogSource, proxy: TcpProxy) -> None:
    await proxy.set_mode("pass")
    for _ in range(100):  # within 10 s, by itself
        if (await loki.health()).state == HealthState.OK:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the adapter did not recover within 10 s")
    assert count(await query(loki)) == 20


async def test_refused(loki: LokiLogSource, proxy: TcpProxy) -> None:
    assert (await loki.health()).state == HealthState.OK
    ok_since = (await loki.health()).since
    await proxy.set_mode("refuse")
    state, reason, took = await timed_health(loki)
    assert state == HealthState.DOWN and "refused" in reason and took < HEALTH_TIMEOUT + 0.5
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable) as err:
        await query(loki)
    assert time.monotonic() - t0 < TIMEOUT + 0.5
    text = str(err.value)
    assert loki.url in text and "loki.url" in text and "LOKI_URL" in text and "refused" in text
    h = await loki.health()
    assert h.since > ok_since  # since when it is down
    await assert_recovers(loki, proxy)


async def test_cut(loki: LokiLogSource, proxy: TcpProxy) -> None:
    assert count(await query(loki)) == 20  # a pooled keep-alive connection exists
    await proxy.set_mode("cut")
    state, reason, _ = await timed_health(loki)
    assert state == HealthState.DOWN and reason
    with pytest.raises(ServiceUnavailable):
        await query(loki)
    await assert_recovers(loki, proxy)


async def test_hang_never_blocks_past_the_timeout(loki: LokiLogSource, proxy: TcpProxy) -> None:
    assert count(await query(loki)) == 20
    await proxy.set_mode("hang")
    state, reason, took = await timed_health(loki)
    assert state == HealthState.DOWN and "no answer" in reason
    assert took < HEALTH_TIMEOUT + 0.5
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable) as err:
        await query(loki)
    took = time.monotonic() - t0
    assert TIMEOUT - 0.2 < took < TIMEOUT + 0.5
    assert "no answer within 2 s" in str(err.value)
    await assert_recovers(loki, proxy)


async def test_slow_is_degraded_but_answers(loki: LokiLogSource, proxy: TcpProxy) -> None:
    await proxy.set_mode("slow", delay=0.5)
    state, reason, _ = await timed_health(loki)
    assert state == HealthState.DEGRADED and "slow" in reason
    t0 = time.monotonic()
    assert count(await query(loki)) == 20
    assert time.monotonic() - t0 >= 0.5
    await assert_recovers(loki, proxy)


async def test_a_5xx_ready_is_degraded() -> None:
    async def ready(request: Request) -> Response:
        return PlainTextResponse("Ingester not ready: waiting for 15s after being ready", 503)

    async with run_server(Starlette(routes=[Route("/ready", ready)])) as srv:
        loki = LokiLogSource(settings(srv.url))
        try:
            h = await loki.health()
        finally:
            await loki.close()
    assert h.state == HealthState.DEGRADED and "503" in h.reason and "Ingester" in h.reason


async def test_down_at_start_then_comes_up(backend: Backend, tmp_path: Path) -> None:
    """Nothing listening when the adapter is made: down, clear errors; the server appears:
    everything works, with no restart of the adapter."""
    async with TcpProxy("127.0.0.1", 1, mode="refuse") as proxy:
        loki = LokiLogSource(settings(f"http://127.0.0.1:{proxy.port}", timeout=TIMEOUT))
        try:
            assert (await loki.health()).state == HealthState.DOWN
            with pytest.raises(ServiceUnavailable):
                await query(loki)
            async with run_server(create_app(backend)) as srv:
                proxy.target_port = srv.port
                await assert_recovers(loki, proxy)
        finally:
            await loki.close()


async def test_never_an_unhandled_exception_while_faults_come_and_go(
    loki: LokiLogSource, proxy: TcpProxy
) -> None:
    outcomes: dict[str, int] = {}
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        while not stop.is_set():
            now = time.time_ns()
            try:
                async with asyncio.timeout(TIMEOUT + 1.5):  # the bound the adapter must keep
                    if i % 3 == 0:
                        await loki.query_range('{agent="f"}', now - 3600 * NS, now, limit=7)
                    elif i % 3 == 1:
                        await loki.labels(now - 3600 * NS, now)
                    else:
                        await loki.health()
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except ServiceUnavailable:
                outcomes["unavailable"] = outcomes.get("unavailable", 0) + 1
            await asyncio.sleep(0.02)

    workers = [asyncio.create_task(worker(i)) for i in range(6)]
    try:
        for mode in ("refuse", "pass", "cut", "pass", "hang", "slow", "pass", "refuse"):
            await proxy.set_mode(mode, delay=0.4)  # type: ignore[arg-type]
            await asyncio.sleep(0.8)
    finally:
        stop.set()
        await asyncio.gather(*workers)  # a TimeoutError or anything else would surface here
    assert outcomes.get("ok", 0) > 0 and outcomes.get("unavailable", 0) > 0
    await assert_recovers(loki, proxy)


async def test_tail_survives_hang_and_refusal_without_gap_or_duplicate(
    backend: Backend, loki: LokiLogSource, proxy: TcpProxy
) -> None:
    it = loki.tail('{agent="live"}', time.time_ns(), limit=1000)
    got: list[TailEntry] = []

    async def consume(n: int) -> None:
        async for batch in it:
            got.extend(batch.entries)
            if len(got) >= n:
                return

    try:
        first = await pusher(backend, 9, 0.01, "before")
        async with asyncio.timeout(10):
            await consume(9)
        await proxy.set_mode("hang")  # the open WebSocket stops moving: pings go unanswered
        during = await pusher(backend, 30, 0.05, "hang")
        await asyncio.sleep(2 * min(5.0, TIMEOUT) + 0.5)  # the ping timeout notices
        await proxy.set_mode("refuse")
        during += await pusher(backend, 12, 0.02, "refused")
        await asyncio.sleep(0.5)
        await proxy.set_mode("pass")
        after = await pusher(backend, 9, 0.01, "after")
        async with asyncio.timeout(20):
            await consume(60)
        sent = first + during + after
        assert sorted(entry_keys(got)) == sorted(sent)
        assert len(set(entry_keys(got))) == len(got)
        assert loki.tail_reconnects >= 1
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def test_cached_source_serves_stale_during_a_hang_within_the_timeout(
    loki: LokiLogSource, proxy: TcpProxy
) -> None:
    clock = [0.0]
    cached = CachedLogSource(loki, MemoryCache(clock=lambda: clock[0]))
    now = time.time_ns()
    q, start, end = '{agent="f"}', now - 3600 * NS, now
    fresh = await cached.query_range(q, start, end)
    clock[0] += 60
    await proxy.set_mode("hang")
    t0 = time.monotonic()
    old = await cached.query_range(q, start, end)
    assert time.monotonic() - t0 < TIMEOUT + 0.5
    assert cached.last_served_stale
    assert repr(old) == repr(fresh)
    assert (await cached.health()).state == HealthState.DEGRADED
    await proxy.set_mode("pass")
    await cached.query_range(q, start, end)
    assert not cached.last_served_stale


async def test_server_restart_mid_tail(tmp_path: Path) -> None:
    """The store's HTTP server goes away entirely (the process stops) and comes back on the
    same port: the tail resumes without gap or duplicate."""
    be = await backend_at(tmp_path / "r")
    try:
        async with TcpProxy("127.0.0.1", 1) as proxy:
            loki = LokiLogSource(
                settings(f"http://127.0.0.1:{proxy.port}", timeout=TIMEOUT), backoff_initial=0.05
            )
            it = loki.tail('{agent="live"}', time.time_ns(), limit=1000)
            got: list[TailEntry] = []

            async def consume(n: int) -> None:
                async for batch in it:
                    got.extend(batch.entries)
                    if len(got) >= n:
                        return

            try:
                async with run_server(create_app(be)) as srv:
                    proxy.target_port = srv.port
                    sent = await pusher(be, 12, 0.01, "first")
                    async with asyncio.timeout(10):
                        await consume(12)
                sent += await pusher(be, 12, 0.01, "while down")  # server stopped
                async with run_server(create_app(be)) as srv:
                    proxy.target_port = srv.port
                    sent += await pusher(be, 12, 0.01, "second")
                    async with asyncio.timeout(20):
                        await consume(36)
                assert sorted(entry_keys(got)) == sorted(sent)
            finally:
                await it.aclose()  # type: ignore[attr-defined]
                await loki.close()
    finally:
        await be.close()
