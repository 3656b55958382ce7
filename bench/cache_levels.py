"""Cache latency per level: a memory hit and a Redis hit through TwoLevelCache.get, next to a bare
redis-py GET on the same server in the same run (the baseline).

    python bench/cache_levels.py [--url redis://127.0.0.1:6379/15] [--runs 5000] [--size 2048]

Goals (issue 5), p50: memory hit <= 1 ms, Redis hit <= 3 ms. A Redis hit costs one round trip
(GET and PTTL pipelined: the memory level is filled with the remaining TTL) plus the fill; the
ratio against the bare GET shows what the cache layer adds. Keys live under a random prefix and
are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import redis.asyncio as aioredis
from _common import pct, timed

from backend.cache import MemoryCache
from backend.redis_cache import RedisCache, TwoLevelCache

KEYS = 100


def ms3(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--size", type=int, default=2048, help="value size in bytes")
    args = ap.parse_args()

    prefix = f"agentlog-bench:{uuid.uuid4().hex[:8]}:"
    value = bytes(range(256)) * (args.size // 256) + b"x" * (args.size % 256)
    cache = TwoLevelCache(
        MemoryCache(), RedisCache(args.url, key_prefix=prefix), channel=prefix + "invalidate"
    )
    await cache.start()
    if not cache.redis.available:
        print(f"Redis not reachable at {cache.redis.detail}: {(await cache.health()).reason}")
        await cache.close()
        return
    bare = aioredis.Redis.from_url(args.url)
    try:
        keys = [f"k{i}" for i in range(KEYS)]
        for k in keys:
            await cache.set(k, value, ttl=600)

        i = 0

        def next_key() -> str:
            nonlocal i
            i += 1
            return keys[i % KEYS]

        async def memory_hit() -> None:
            assert await cache.get(next_key()) is not None

        async def redis_hit() -> None:
            k = next_key()
            cache.memory.delete_nowait(k)  # force the second level (O(1), not what we time)
            assert await cache.get(k) is not None

        async def redis_level_get() -> None:
            assert await cache.redis.get(next_key()) is not None

        async def bare_get() -> None:
            assert await bare.get(prefix + next_key()) is not None

        for fn in (memory_hit, redis_hit, redis_level_get, bare_get):  # warm up connections
            await timed(fn, 200)

        # interleave the rounds so that machine noise hits every variant alike
        rounds = 5
        per = max(1, args.runs // rounds)
        res: dict[str, list[float]] = {"mem": [], "redis": [], "level": [], "bare": []}
        for _ in range(rounds):
            res["bare"] += await timed(bare_get, per)
            res["mem"] += await timed(memory_hit, per)
            res["redis"] += await timed(redis_hit, per)
            res["level"] += await timed(redis_level_get, per)

        base = pct(res["bare"], 50)
        print(f"cache levels, {per * rounds} gets each, {len(value)} B values, {args.url}")
        rows = [
            ("bare redis-py GET (baseline)", "bare", None),
            ("TwoLevelCache memory hit", "mem", 0.001),
            ("TwoLevelCache Redis hit (+fill)", "redis", 0.003),
            ("RedisCache.get (level alone)", "level", None),
        ]
        for label, key, goal in rows:
            p50, p95 = pct(res[key], 50), pct(res[key], 95)
            verdict = ""
            if goal is not None:
                verdict = f"  goal p50 <= {goal * 1000:g} ms: {'ok' if p50 <= goal else 'MISSED'}"
            print(
                f"  {label:34s} p50 {ms3(p50)}  p95 {ms3(p95)}  x{p50 / base:5.2f} of bare GET{verdict}"
            )
        [mem, red] = await cache.stats()
        print(f"  stats: memory hits {mem.hits} misses {mem.misses}; redis hits {red.hits}")
    finally:
        keys_left = [k async for k in bare.scan_iter(match=prefix + "*")]
        if keys_left:
            await bare.delete(*keys_left)
        await bare.aclose()
        await cache.close()


if __name__ == "__main__":
    asyncio.run(main())
