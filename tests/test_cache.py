"""MemoryCache (LRU + TTL + byte bound) and the single-flight get_or_compute."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest

from backend.cache import MemoryCache, _inflight, get_or_compute
from backend.errors import UsageError
from backend.ports import Cache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: object) -> tuple[MemoryCache, FakeClock]:
    clock = FakeClock()
    return MemoryCache(clock=clock, **kw), clock  # type: ignore[arg-type]


async def test_implements_port_and_roundtrip() -> None:
    cache, _ = make()
    port: Cache = cache  # static check that MemoryCache satisfies the Protocol
    assert await port.get("a") is None
    await port.set("a", b"1")
    assert await port.get("a") == b"1"
    await port.delete("a")
    assert await port.get("a") is None
    [st] = await port.stats()
    assert (st.level, st.hits, st.misses, st.sets, st.size) == ("memory", 1, 2, 1, 0)
    assert st.max_size == 10_000
    assert st.hit_rate == pytest.approx(1 / 3)


async def test_lru_evicts_least_recently_used_by_count() -> None:
    cache, _ = make(max_entries=3)
    for k in "abc":
        await cache.set(k, k.encode())
    assert await cache.get("a") == b"a"  # a is now most recent; b is the LRU
    await cache.set("d", b"d")
    assert "b" not in cache
    assert [k for k in "acd" if k in cache] == ["a", "c", "d"]
    [st] = await cache.stats()
    assert st.evictions == 1 and st.expirations == 0 and st.size == 3


async def test_byte_bound_evicts_and_oversize_not_stored() -> None:
    cache, _ = make(max_bytes=100)
    await cache.set("k1", b"x" * 40)  # 42 bytes charged
    await cache.set("k2", b"x" * 40)  # 84
    assert cache.bytes_used == 84
    await cache.set("k3", b"x" * 40)  # 126 > 100: k1 goes
    assert "k1" not in cache and "k2" in cache and "k3" in cache
    assert cache.bytes_used == 84
    await cache.set("big", b"x" * 200)  # larger than the whole cache: ignored, nothing evicted
    assert "big" not in cache and len(cache) == 2
    # replacing a key re-charges it rather than double counting
    await cache.set("k2", b"y")
    assert cache.bytes_used == 42 + 3


async def test_ttl_expiry_default_explicit_and_infinite() -> None:
    cache, clock = make(default_ttl=10)
    await cache.set("default", b"1")
    await cache.set("short", b"2", ttl=2)
    await cache.set("forever", b"3", ttl=math.inf)
    assert await cache.ttl("short") == pytest.approx(2)
    assert await cache.ttl("forever") is None
    assert await cache.ttl("missing") is None
    clock.now += 5
    assert await cache.get("short") is None
    assert await cache.get("default") == b"1"
    clock.now += 6
    assert await cache.get("default") is None
    assert await cache.get("forever") == b"3"
    [st] = await cache.stats()
    assert st.expirations == 2 and st.evictions == 0 and st.size == 1


async def test_no_default_ttl_and_nonpositive_ttl() -> None:
    cache, clock = make(default_ttl=None)
    await cache.set("a", b"1")
    clock.now += 1e9
    assert await cache.get("a") == b"1"
    await cache.set("a", b"2", ttl=0)  # zero ttl: stale at once, so the key goes away
    assert await cache.get("a") is None


async def test_expired_lru_victim_counts_as_expiration_and_purge() -> None:
    cache, clock = make(max_entries=2, default_ttl=None)
    await cache.set("old", b"1", ttl=1)
    await cache.set("keep", b"2")
    clock.now += 2
    await cache.set("new", b"3")  # makes room: the victim had expired already
    [st] = await cache.stats()
    assert (st.evictions, st.expirations) == (0, 1)
    await cache.set("soon", b"4", ttl=1)  # evicts "keep" (live): an eviction
    clock.now += 2
    assert cache.purge_expired() == 1
    [st] = await cache.stats()
    assert (st.evictions, st.expirations, st.size) == (1, 2, 1)


def test_invalid_bounds_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="max_entries"):
        MemoryCache(max_entries=0)
    with pytest.raises(UsageError, match="default_ttl"):
        MemoryCache(default_ttl=0)


async def test_get_or_compute_single_flight() -> None:
    cache, _ = make()
    calls = 0
    gate = asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b"summary"

    tasks = [asyncio.create_task(get_or_compute(cache, "k", compute, ttl=60)) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert calls == 1
    gate.set()
    assert await asyncio.gather(*tasks) == [b"summary"] * 10
    assert calls == 1
    assert await cache.ttl("k") == pytest.approx(60)
    # a later call is a plain hit
    assert await get_or_compute(cache, "k", compute) == b"summary"
    assert calls == 1
    assert not _inflight


async def test_get_or_compute_error_reaches_all_waiters_and_is_not_cached() -> None:
    cache, _ = make()
    calls = 0
    gate = asyncio.Event()

    async def boom() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("provider down")

    tasks = [asyncio.create_task(get_or_compute(cache, "k", boom)) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "provider down" for r in results)
    assert "k" not in cache

    async def ok() -> bytes:
        return b"v"

    assert await get_or_compute(cache, "k", ok) == b"v"  # retried, not a cached failure
    assert not _inflight


async def test_get_or_compute_leader_cancelled_waiter_takes_over() -> None:
    cache, _ = make()
    started: list[str] = []
    gate = asyncio.Event()

    def compute_as(name: str) -> Callable[[], Awaitable[bytes]]:
        async def compute() -> bytes:
            started.append(name)
            await gate.wait()
            return name.encode()

        return compute

    leader = asyncio.create_task(get_or_compute(cache, "k", compute_as("leader")))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(get_or_compute(cache, "k", compute_as("waiter")))
    await asyncio.sleep(0.01)
    leader.cancel()
    await asyncio.sleep(0.01)
    gate.set()
    assert await waiter == b"waiter"
    assert started == ["leader", "waiter"]
    assert leader.cancelled()


async def test_get_or_compute_distinct_keys_run_concurrently() -> None:
    cache, _ = make()
    running = 0
    peak = 0

    async def compute() -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return b"x"

    await asyncio.gather(*(get_or_compute(cache, f"k{i}", compute) for i in range(4)))
    assert peak == 4
