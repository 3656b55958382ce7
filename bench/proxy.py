"""The Loki adapter and its caching proxy: what they add on top of a plain HTTP request, and what a
cache hit costs, in the same run.

    python bench/proxy.py [--lines 20000] [--runs 200] [--redis redis://127.0.0.1:6379/15]

The store is `agentlog serve` (the embedded store's Loki API) in a child process, as a Loki would
be; its lines are pushed through the adapter (demo fleet, last 30 minutes). Figures, per query:

- miss: `CachedLogSource(LokiLogSource).query_range` with the cache emptied before each call
  (adapter + key + encode + two cache writes), against a direct httpx2 GET of the same URL,
  parameters and headers, parsed with orjson. Calls alternate A/B; ratio = median / median.
  Goal: <= 1.15.
- memory hit, Redis hit (the memory level emptied before each call): p50 of the whole call,
  decoding included. Goals: <= 1 ms and <= 3 ms.
- 50 identical concurrent queries on a cold cache: upstream calls. Goal: 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import orjson
import redis.asyncio as aioredis
from _common import ROOT, demo_batches, median, pct

from backend.cache import MemoryCache
from backend.config import LokiSettings
from backend.loki import CachedLogSource, LokiLogSource
from backend.loki.client import CATEGORIZE, fmt_ns, fmt_seconds
from backend.redis_cache import RedisCache, TwoLevelCache

NS = 1_000_000_000
SERVER_AS_IS = """
import asyncio, sys
from backend.config import load_config
from backend.http.serve import serve
settings = load_config(None, env={}, overrides={"data_dir": sys.argv[1]}).settings
asyncio.run(serve(settings, host="127.0.0.1", port=int(sys.argv[2])))
"""
# The same app and uvicorn settings as `agentlog serve`, on a listening socket made with
# proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then. A socket from
# socket.create_server() has proto 0, so (with uvicorn's h11 protocol writing the headers and
# the body separately) every answer waits ~40 ms for the client's delayed ACK, which would
# drown what this bench measures. `--serve-as-is` runs `serve()` unchanged instead.
SERVER = """
import asyncio, socket, sys
from backend.config import load_config
from backend.facade import Backend
from backend.http.app import create_app
from backend.http.serve import Server, uvicorn_config

async def main():
    settings = load_config(None, env={}, overrides={"data_dir": sys.argv[1]}).settings
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[2])))
    sock.listen(128)
    backend = await Backend.open(settings)
    try:
        await Server(uvicorn_config(create_app(backend))).serve(sockets=[sock])
    finally:
        await backend.close()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ms3(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


async def wait_ready(url: str) -> None:
    async with httpx2.AsyncClient(timeout=5) as client:
        for _ in range(400):
            try:
                if (await client.get(url + "/ready")).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("agentlog serve did not come up")


async def timed(
    fn: Callable[[], Awaitable[object]], before: Callable[[], object] | None, runs: int
) -> list[float]:
    out = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--serve-as-is", action="store_true", help="run serve() unchanged")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="agentlog-bench-proxy-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVER_AS_IS if args.serve_as_is else SERVER,
            str(Path(tmp)),
            str(port),
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_ready(url)
            await run(url, args)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def run(url: str, args: argparse.Namespace) -> None:
    loki = LokiLogSource(LokiSettings(url=url, timeout="30s"))
    now = time.time_ns() // NS * NS
    pushed = 0
    t0 = time.perf_counter()
    for batch in demo_batches(args.lines, 1800, now - 5 * NS):
        res = await loki.push(batch)
        pushed += res.accepted
    print(f"pushed {pushed} demo lines through the adapter in {time.perf_counter() - t0:.1f} s")

    start, end = now - 900 * NS, now
    queries: list[tuple[str, str, int | None, int]] = [
        ("logs, 100 newest", '{agent=~".+"}', None, 100),
        ("logs, json filter, 100", '{agent=~".+"} | json | level="error"', None, 100),
        ("logs, 1000 newest", '{agent=~".+"}', None, 1000),
        ("metric, 15 steps", 'sum by (agent) (count_over_time({agent=~".+"}[1m]))', 60 * NS, 100),
    ]
    headers = {"X-Loki-Response-Encoding-Flags": CATEGORIZE}
    memory = MemoryCache(max_entries=100_000, max_bytes=512 << 20)
    cached = CachedLogSource(loki, memory)

    print(f"\nquery_range over the last 15 min, {args.runs} runs each (alternating A/B)")
    print(
        f"{'query':26} {'direct p50':>12} {'adapter miss p50':>17} {'ratio':>6}  "
        f"{'direct p90':>11} {'miss p90':>11} {'mem hit p50':>12} {'entries':>8}"
    )
    async with httpx2.AsyncClient(timeout=30) as direct:
        for name, q, step, limit in queries:
            params = [
                ("query", q),
                ("start", fmt_ns(start)),
                ("end", fmt_ns(end)),
                ("limit", str(limit)),
                ("direction", "backward"),
            ]
            if step is not None:
                params.append(("step", fmt_seconds(step)))

            async def plain(params: list[tuple[str, str]] = params) -> object:
                r = await direct.get(
                    url + "/loki/api/v1/query_range", params=params, headers=headers
                )
                r.raise_for_status()
                return orjson.loads(r.content)

            async def adapter(q: str = q, step: int | None = step, limit: int = limit) -> object:
                return await cached.query_range(q, start, end, limit=limit, step_ns=step)

            for _ in range(20):  # warm both paths (connections, parser cache, SQLite pages)
                await plain()
                memory.clear()
                await adapter()
            a: list[float] = []
            b: list[float] = []
            for _ in range(args.runs):
                a += await timed(plain, None, 1)
                b += await timed(adapter, memory.clear, 1)
            body = await plain()
            n = sum(len(s["values"]) for s in body["data"]["result"]) if step is None else 0  # type: ignore[index]
            hits = await timed(adapter, None, args.runs)
            ratio = median(b) / median(a)
            print(
                f"{name:26} {ms3(median(a)):>12} {ms3(median(b)):>17} {ratio:6.3f}  "
                f"{ms3(pct(a, 90)):>11} {ms3(pct(b, 90)):>11} {ms3(median(hits)):>12} {n:8d}"
                f"   {'ok' if ratio <= 1.15 else 'OVER 1.15'}"
            )
            if median(hits) > 0.001:
                print(f"    memory hit p50 over the 1 ms goal for {name}")

    await redis_hits(loki, args, start, end)

    print("\n50 identical concurrent queries on a cold cache")
    fresh = CachedLogSource(loki, MemoryCache())
    sent = loki.requests_sent
    q = '{agent=~".+"} | json | level="error"'
    results = await asyncio.gather(
        *(fresh.query_range(q, start, end, limit=100) for _ in range(50))
    )
    same = all(repr(r) == repr(results[0]) for r in results)
    print(
        f"  upstream calls: {fresh.upstream_calls}, HTTP requests: {loki.requests_sent - sent}, "
        f"identical answers: {same}   {'ok' if fresh.upstream_calls == 1 else 'MORE THAN 1'}"
    )
    await loki.close()


async def redis_hits(loki: LokiLogSource, args: argparse.Namespace, start: int, end: int) -> None:
    prefix = f"agentlog-bench:{uuid.uuid4().hex[:8]}:"
    two = TwoLevelCache(
        MemoryCache(), RedisCache(args.redis, key_prefix=prefix), channel=prefix + "inv"
    )
    await two.start()
    try:
        if not two.redis.available:
            print(f"\nRedis hit: skipped, Redis not reachable at {two.redis.detail}")
            return
        cached = CachedLogSource(loki, two)
        print(f"\nRedis hit (memory level emptied before each call), {args.runs} runs")
        for name, q, limit in [
            ("logs, 100 newest", '{agent=~".+"}', 100),
            ("logs, 1000 newest", '{agent=~".+"}', 1000),
        ]:
            await cached.query_range(q, start, end, limit=limit)  # fill both levels
            times = await timed(
                lambda q=q, limit=limit: cached.query_range(q, start, end, limit=limit),  # type: ignore[misc]
                two.memory.clear,
                args.runs,
            )
            _mem, red = await two.stats()
            print(
                f"  {name:24} p50 {ms3(median(times))}  p90 {ms3(pct(times, 90))}  "
                f"(redis hits so far {red.hits})   {'ok' if median(times) <= 0.003 else 'OVER 3 ms'}"
            )
    finally:
        client = aioredis.Redis.from_url(args.redis)
        try:
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
        await two.close()


if __name__ == "__main__":
    asyncio.run(main())
