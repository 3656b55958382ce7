"""RedisCache and TwoLevelCache against the real Redis (db 15, a random key prefix per test), and
their fault tolerance through TcpProxy (refuse, cut, hang, slow) and a redis-server of our own
that is killed and restarted.

Timeouts are short here (0.5 s, reconnect backoff 0.05 s doubling to 0.4 s) so faults and
recoveries take well under a second each.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis
from tcp_proxy import TcpProxy  # tests/ is on sys.path (no __init__.py: rootdir import)

from backend.cache import MemoryCache
from backend.config import CacheSettings, RedisSettings
from backend.models import HealthState
from backend.ports import Cache
from backend.redis_cache import RedisCache, TwoLevelCache, mask_url, open_cache

pytestmark = pytest.mark.redis

TIMEOUT = 0.5
SLACK = 0.25  # scheduling noise allowed on top of the timeout on a busy machine


# ---------------------------------------------------------------- helpers and fixtures


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def with_port(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A random key prefix (and channel) for this test; its keys are deleted afterwards."""
    pfx = f"agentlog-test:{uuid.uuid4().hex[:12]}:"
    yield pfx
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=pfx + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    parts = urlsplit(redis_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as p:
        yield p


def make_redis(url: str, prefix: str, **kw: float) -> RedisCache:
    opts: dict[str, float] = {
        "socket_timeout": TIMEOUT,
        "backoff_initial": 0.05,
        "backoff_max": 0.4,
    }
    opts.update(kw)
    return RedisCache(url, key_prefix=prefix, **opts)  # type: ignore[arg-type]


def make_two(url: str, prefix: str, **kw: float) -> TwoLevelCache:
    return TwoLevelCache(
        MemoryCache(default_ttl=60),
        make_redis(url, prefix, **kw),
        channel=prefix + "invalidate",
        ping_interval=0.5,
    )


@pytest.fixture
async def caches(redis_url: str, prefix: str) -> AsyncIterator[list[TwoLevelCache]]:
    """Started TwoLevelCaches are appended here by the test and closed afterwards."""
    made: list[TwoLevelCache] = []
    yield made
    for c in made:
        await c.close()


async def started(made: list[TwoLevelCache], url: str, prefix: str) -> TwoLevelCache:
    c = make_two(url, prefix)
    made.append(c)
    await c.start()
    return c


async def is_ok(c: TwoLevelCache | RedisCache) -> bool:
    return (await c.health()).state is HealthState.OK


async def is_down(c: TwoLevelCache | RedisCache) -> bool:
    return (await c.health()).state is HealthState.DOWN


async def is_subscribed(c: TwoLevelCache) -> bool:
    return c.subscribed


# ---------------------------------------------------------------- RedisCache


async def test_redis_roundtrip_ttl_delete_stats(redis_url: str, prefix: str, raw: aioredis.Redis):
    rc = make_redis(redis_url, prefix, default_ttl=120)
    port: Cache = rc  # static check: RedisCache satisfies ports.Cache
    try:
        assert await port.get("a") is None
        await port.set("a", b"\x00bytes\xff", ttl=30)
        assert await port.get("a") == b"\x00bytes\xff"
        assert await raw.get(prefix + "a") == b"\x00bytes\xff"  # the prefix is applied
        left = await port.ttl("a")
        assert left is not None and 29 < left <= 30
        await port.set("d", b"x")  # default_ttl
        left = await port.ttl("d")
        assert left is not None and 119 < left <= 120
        await port.set("forever", b"x", ttl=math.inf)
        assert await port.ttl("forever") is None and await port.get("forever") == b"x"
        assert await port.ttl("absent") is None
        await port.set("forever", b"y", ttl=0)  # already stale: removed
        assert await port.get("forever") is None
        await port.delete("a")
        assert await port.get("a") is None
        await port.delete("never-there")
        [st] = await port.stats()
        assert (st.level, st.hits, st.misses, st.sets) == ("redis", 2, 3, 3)
        assert rc.errors == 0
        h = await rc.health()
        assert (h.kind, h.state, h.reason) == ("redis", HealthState.OK, "")
        assert h.latency_ms is not None and h.since > 0
    finally:
        await port.close()


async def test_redis_expiry_and_remaining_ttl(redis_url: str, prefix: str):
    rc = make_redis(redis_url, prefix)
    try:
        await rc.set("short", b"v", ttl=0.15)
        value, left = await rc.get_with_ttl("short")
        assert value == b"v" and left is not None and 0 < left <= 0.15
        await asyncio.sleep(0.3)
        assert await rc.get_with_ttl("short") == (None, None)
    finally:
        await rc.close()


def test_mask_url_hides_passwords():
    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:****@h:6379/0"
    assert mask_url("rediss://user:s3cret@h/1") == "rediss://user:****@h/1"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    masked = mask_url("unix:///run/redis.sock?db=2&password=s3cret")
    assert "s3cret" not in masked and "password=****" in masked
    rc = RedisCache("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in rc.detail and "s3cret" not in repr(rc.detail)


# ---------------------------------------------------------------- two levels, two instances


async def test_value_set_on_one_instance_is_a_redis_hit_then_memory_hit_on_another(
    redis_url: str, prefix: str, caches: list[TwoLevelCache]
):
    a = await started(caches, redis_url, prefix)
    b = await started(caches, redis_url, prefix)
    port: Cache = a  # static check
    await port.set("summary:run-1", b"the summary", ttl=40)
    assert await b.get("summary:run-1") == b"the summary"
    mem, red = await b.stats()
    assert (mem.level, mem.hits, mem.misses) == ("memory", 0, 1)
    assert (red.level, red.hits, red.misses) == ("redis", 1, 0)
    # filled into b's memory level with the remaining Redis TTL, not the memory default (60)
    left = b.memory.ttl_nowait("summary:run-1")
    assert left is not None and 39 < left <= 40
    assert await b.get("summary:run-1") == b"the summary"
    mem, red = await b.stats()
    assert (mem.hits, red.hits) == (1, 1)
    # a miss everywhere
    assert await b.get("nothing") is None
    mem, red = await b.stats()
    assert (mem.misses, red.misses) == (2, 1)
    left = await b.ttl("summary:run-1")
    assert left is not None and 39 < left <= 40


async def test_delete_on_one_instance_reaches_the_others_memory_within_a_second(
    redis_url: str, prefix: str, caches: list[TwoLevelCache]
):
    a = await started(caches, redis_url, prefix)
    b = await started(caches, redis_url, prefix)
    assert a.subscribed and b.subscribed
    await a.set("k", b"v1")
    assert await b.get("k") == b"v1"
    assert "k" in b.memory
    t0 = time.monotonic()
    await a.delete("k")

    async def gone() -> bool:
        return "k" not in b.memory

    await eventually(gone, within=1.0)
    assert time.monotonic() - t0 < 1.0
    assert await b.get("k") is None
    assert b.invalidations == 2  # a's set, then a's delete
    # an overwrite invalidates the other copies too
    await a.set("k", b"v2")
    await b.get("k")
    await a.set("k", b"v3")
    await eventually(gone, within=1.0)
    assert await b.get("k") == b"v3"
    # the sender ignores its own invalidations (its memory keeps the value it just set)
    assert a.invalidations == 0 and "k" in a.memory


async def test_a_read_overtaken_by_an_invalidation_does_not_fill_memory(
    redis_url: str, prefix: str, caches: list[TwoLevelCache]
):
    a = await started(caches, redis_url, prefix)
    await a.set("k", b"old")
    a.memory.clear()
    real = a.redis.get_with_ttl

    async def slow_read(key: str) -> tuple[bytes | None, float | None]:
        got = await real(key)
        await a.set(key, b"new")  # lands while the read is "in flight"
        return got

    a.redis.get_with_ttl = slow_read  # type: ignore[method-assign]
    assert await a.get("k") == b"old"
    a.redis.get_with_ttl = real  # type: ignore[method-assign]
    assert await a.get("k") == b"new"


async def test_open_cache_from_settings(redis_url: str, prefix: str):
    plain = await open_cache(CacheSettings(), RedisSettings(enabled=False))
    assert isinstance(plain, MemoryCache)
    two = await open_cache(
        CacheSettings(memory_max_entries=7),
        RedisSettings(enabled=True, url=redis_url, key_prefix=prefix, default_ttl=42),
    )
    try:
        assert isinstance(two, TwoLevelCache) and two.subscribed
        assert two.memory.max_entries == 7 and two.channel == prefix + "invalidate"
        await two.set("k", b"v")
        left = await two.redis.ttl("k")
        assert left is not None and 41 < left <= 42
    finally:
        await two.close()


# ---------------------------------------------------------------- faults through the proxy


async def test_redis_refused_at_start_works_memory_only_then_recovers(
    redis_url: str, prefix: str, proxy: TcpProxy, caches: list[TwoLevelCache]
):
    await proxy.set_mode("refuse")
    url = with_port(redis_url, "127.0.0.1", proxy.port)
    a = await started(caches, url, prefix)  # must not raise
    b = await started(caches, redis_url, prefix)  # a healthy colleague
    h = await a.health()
    assert h.state is HealthState.DOWN
    assert "connection refused" in h.reason and "in-process cache only" in h.reason
    assert h.since > 0 and str(proxy.port) in h.detail
    await a.set("k", b"v")  # memory only
    assert await a.get("k") == b"v"
    mem, red = await a.stats()
    assert mem.hits == 1 and red.sets == 0
    assert await b.get("k") is None  # it never reached Redis

    await proxy.set_mode("pass")
    await eventually(lambda: is_ok(a))
    await eventually(lambda: is_subscribed(a))
    await a.set("k2", b"shared")
    assert await b.get("k2") == b"shared"
    await a.delete("k2")
    await eventually(lambda: _absent(b, "k2"), within=1.0)
    assert a.redis.reconnects == 1


async def _absent(c: TwoLevelCache, key: str) -> bool:
    return key not in c.memory


async def test_connection_cut_mid_session(
    redis_url: str, prefix: str, proxy: TcpProxy, caches: list[TwoLevelCache]
):
    a = await started(caches, with_port(redis_url, "127.0.0.1", proxy.port), prefix)
    b = await started(caches, redis_url, prefix)
    await a.set("k", b"v")
    assert await a.get("k") == b"v"
    a.memory.clear()

    await proxy.set_mode("cut")
    assert await a.get("k") is None  # a miss and an error, not an exception
    await a.set("k3", b"x")
    await a.delete("k3")
    h = await a.health()
    assert h.state is HealthState.DOWN and "connection lost" in h.reason
    assert a.redis.errors >= 3

    await proxy.set_mode("pass")
    await eventually(lambda: is_ok(a))
    assert await a.get("k") == b"v"  # values flow again
    # the invalidation subscription came back too
    await eventually(lambda: is_subscribed(a))
    await b.delete("k")
    await eventually(lambda: _absent(a, "k"), within=1.0)


async def test_hanging_redis_never_blocks_callers_beyond_the_timeout(
    redis_url: str, prefix: str, proxy: TcpProxy, caches: list[TwoLevelCache]
):
    a = await started(caches, with_port(redis_url, "127.0.0.1", proxy.port), prefix)
    await a.set("k", b"v")
    a.memory.clear()

    await proxy.set_mode("hang")
    t0 = time.perf_counter()
    results = await asyncio.gather(*(a.get("k") for _ in range(50)))
    assert time.perf_counter() - t0 < TIMEOUT + SLACK
    assert results == [None] * 50
    assert await is_down(a)
    # while down, operations do not touch the network: instant, and no new connections
    accepted = proxy.accepted
    t0 = time.perf_counter()
    for _ in range(100):
        assert await a.get("k") is None
        await a.set("k", b"w")
        a.memory.clear()
    assert time.perf_counter() - t0 < 0.1
    # at most one reconnect attempt at a time: a handful of connections, not hundreds
    assert proxy.accepted - accepted <= 3
    t0 = time.perf_counter()
    h = await a.health()
    assert time.perf_counter() - t0 < TIMEOUT + SLACK
    assert h.state is HealthState.DOWN and "no answer within 0.5 s" in h.reason

    await proxy.set_mode("pass")
    await eventually(lambda: is_ok(a))
    assert await a.get("k") == b"v"
    await a.set("k", b"after")
    a.memory.clear()
    assert await a.get("k") == b"after"


async def test_hung_subscription_is_detected_and_resubscribed(
    redis_url: str, prefix: str, proxy: TcpProxy, caches: list[TwoLevelCache]
):
    a = await started(caches, with_port(redis_url, "127.0.0.1", proxy.port), prefix)
    b = await started(caches, redis_url, prefix)
    await a.set("k", b"v")
    await proxy.set_mode("hang")  # nobody uses `a`: only its PING can notice

    async def unsubscribed() -> bool:
        return not a.subscribed

    await eventually(unsubscribed, within=0.5 + 1.0 + TIMEOUT + SLACK)
    h = await a.health()
    assert h.state is not HealthState.OK
    await proxy.set_mode("pass")
    await eventually(lambda: is_ok(a))
    await eventually(lambda: is_subscribed(a))
    assert a.resubscribes >= 1
    assert "k" not in a.memory  # invalidations may have been missed: memory level dropped
    await a.get("k")
    await b.delete("k")
    await eventually(lambda: _absent(a, "k"), within=1.0)


async def test_slow_redis_is_degraded_then_down_when_slower_than_the_timeout(
    redis_url: str, prefix: str, proxy: TcpProxy, caches: list[TwoLevelCache]
):
    a = await started(caches, with_port(redis_url, "127.0.0.1", proxy.port), prefix)
    await a.set("k", b"v")
    a.memory.clear()

    await proxy.set_mode("slow", delay=0.2)
    t0 = time.perf_counter()
    assert await a.redis.get("k") == b"v"  # slow but answered
    assert 0.15 < time.perf_counter() - t0 < TIMEOUT + SLACK
    h = await a.health()
    assert h.state is HealthState.DEGRADED and h.reason.startswith("slow:")
    assert h.latency_ms is not None and h.latency_ms > 150

    await proxy.set_mode("slow", delay=TIMEOUT * 2)
    t0 = time.perf_counter()
    assert await a.get("k") is None
    assert time.perf_counter() - t0 < TIMEOUT + SLACK
    assert await is_down(a)

    await proxy.set_mode("pass")
    await eventually(lambda: is_ok(a))
    assert await a.get("k") == b"v"


# ---------------------------------------------------------------- a redis-server of our own


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port: int = s.getsockname()[1]
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--loglevel",
            "warning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                if self.proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    if shutil.which("redis-server") is None:
        msg = "the redis-server binary is not installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{msg}, and CI=true: the kill/restart test must run in CI")
        pytest.skip(msg)
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.kill()


async def test_redis_server_killed_and_restarted_recovers_by_itself(
    own_redis: RedisServer, prefix: str, caches: list[TwoLevelCache]
):
    a = await started(caches, own_redis.url, prefix)
    b = await started(caches, own_redis.url, prefix)
    await a.set("k", b"v")
    assert await b.get("k") == b"v"

    await own_redis.kill()
    assert await a.get("k") == b"v"  # memory level still serves
    b.memory.clear()
    assert await b.get("k") is None  # Redis gone: a miss, no exception
    await a.set("k2", b"x")
    await eventually(lambda: is_down(a))
    h = await a.health()
    assert h.state is HealthState.DOWN and "in-process cache only" in h.reason

    await own_redis.start()  # same port, empty (no persistence)
    await eventually(lambda: is_ok(a))
    await eventually(lambda: is_ok(b))
    await a.set("k3", b"again")
    assert await b.get("k3") == b"again"
    await eventually(lambda: is_subscribed(a))
    await eventually(lambda: is_subscribed(b))
    await a.delete("k3")
    await eventually(lambda: _absent(b, "k3"), within=1.0)


# ---------------------------------------------------------------- TcpProxy itself (echo server)


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(1024):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def roundtrip(port: int, payload: bytes = b"ping", wait: float = 2.0) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(payload)
        async with asyncio.timeout(wait):
            return await r.readexactly(len(payload))
    finally:
        w.close()


async def test_tcp_proxy_modes(echo: int):
    async with TcpProxy("127.0.0.1", echo) as p:
        assert await roundtrip(p.port) == b"ping"

        await p.set_mode("refuse")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", p.port)

        await p.set_mode("pass")  # listening again on the same port
        assert await roundtrip(p.port) == b"ping"

        # cut: an open connection is reset, and so are new ones
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        await p.set_mode("cut")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            w.write(b"x")
            await w.drain()
            await r.readexactly(1)
        w.close()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await roundtrip(p.port)

        # hang: accepted, never answered; the held bytes flow when the mode changes back
        await p.set_mode("pass")
        r, w = await asyncio.open_connection("127.0.0.1", p.port)
        await p.set_mode("hang")
        w.write(b"held")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await r.readexactly(4)
        p.mode = "pass"
        async with asyncio.timeout(2):
            assert await r.readexactly(4) == b"held"
        w.close()

        # slow: each answer arrives `delay` later
        await p.set_mode("slow", delay=0.2)
        t0 = time.perf_counter()
        assert await roundtrip(p.port) == b"ping"
        assert 0.18 < time.perf_counter() - t0 < 1.0
        assert p.accepted >= 5
        with pytest.raises(ValueError):
            p.mode = "explode"  # type: ignore[assignment]
