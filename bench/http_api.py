"""HTTP port request latency: a few JSON API endpoints against a bare ASGI hello endpoint.

    python bench/http_api.py [--requests 400] [--lines 20000] [--concurrency 1]

Both servers run in one thread with their own event loop, under the same uvicorn settings as
`agentlog serve`; the client (httpx2, keep-alive) runs in the main thread. The baseline is a raw
ASGI callable answering "hello" (no FastAPI, no middleware): what uvicorn and the loopback socket
cost. Every agentlog request carries a JWT (auth, the rate limiter, the access log, metrics and
security headers all run); the store holds `--lines` demo-fleet lines. Printed: p50/p99 per
endpoint and its p50 over the baseline p50.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
from _common import ROOT, demo_batches, pct

from backend.config import load_config
from backend.facade import Backend
from backend.http.app import HttpOptions, create_app
from backend.http.auth import mint_token
from backend.http.limits import RateLimits
from backend.http.serve import Server, tcp_listener, uvicorn_config
from backend.models import TaskFilter

SECRET = "bench-secret-0123456789-abcdefghijklmnopq"
NS = 1_000_000_000
assert ROOT


async def hello_app(
    scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any
) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


class Servers:
    """The bare app and agentlog's app, served from one background thread."""

    def __init__(self, data_dir: Path, lines: int) -> None:
        self.data_dir = data_dir
        self.lines = lines
        self.urls: dict[str, str] = {}
        self.run_id = ""
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = load_config(
            None, env={}, overrides={"data_dir": str(self.data_dir), "server.jwt_secret": SECRET}
        ).settings
        backend = await Backend.open(settings)
        end = time.time_ns()
        for batch in demo_batches(self.lines, 3600, end):
            await backend.push(batch)
        page = await backend.list_tasks(TaskFilter(), limit=1)
        self.run_id = page.tasks[0].run_id if page.tasks else "none"
        app = create_app(backend, options=HttpOptions(rate_limits=RateLimits(enabled=False)))
        servers = []
        for name, asgi in (("bare", hello_app), ("agentlog", app)):
            sock = tcp_listener("127.0.0.1", 0)
            srv = Server(uvicorn_config(asgi))
            servers.append((srv, asyncio.create_task(srv.serve(sockets=[sock])), sock))
            self.urls[name] = f"http://127.0.0.1:{sock.getsockname()[1]}"
        for srv, _, _ in servers:
            while not srv.started:  # noqa: ASYNC110 (uvicorn only offers the flag)
                await asyncio.sleep(0.01)
        self.ready.set()
        await self._stop.wait()
        for srv, task, sock in servers:
            srv.should_exit = True
            await task
            sock.close()
        await backend.close()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(300):
            raise RuntimeError("servers did not start")

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(60)


async def measure(
    client: httpx.AsyncClient, url: str, n: int, concurrency: int, headers: dict[str, str]
) -> list[float]:
    out: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            r = await client.get(url.replace("{i}", str(i)), headers=headers)
            out.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code} {r.text[:200]}")

    for _ in range(5):  # warm up (connections, caches)
        await client.get(url.replace("{i}", "warm"), headers=headers)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(Path(tmp), args.lines)
        t0 = time.perf_counter()
        servers.start()
        print(
            f"http_api: {args.lines:,} demo lines loaded in {time.perf_counter() - t0:.1f} s; "
            f"{args.requests} requests per endpoint, concurrency {args.concurrency}"
        )
        tok = mint_token(SECRET, subject="bench", role="admin", tenant="fake", ttl_s=3600)
        auth = {"Authorization": f"Bearer {tok}"}
        base = servers.urls["agentlog"]
        cases = [
            ("bare ASGI hello (baseline)", servers.urls["bare"] + "/", {}),
            ("GET /health", base + "/health", {}),
            ("GET /api/whoami (auth only)", base + "/api/whoami", auth),
            ("GET /api/tasks?limit=50", base + "/api/tasks?limit=50", auth),
            ("GET /api/tasks/{run_id}", f"{base}/api/tasks/{servers.run_id}", auth),
            (
                "GET query_range (cached)",
                base
                + "/api/logs/query_range?query=%7Bagent%3D~%22.%2B%22%7D&limit=100&start=1&end=2000000000",
                auth,
            ),
            (
                "GET query_range (miss)",
                base
                + "/api/logs/query_range?query=%7Bagent%3D~%22.%2B%22%7D%20%7C%3D%20%22{i}%22&limit=100&since=1h",
                auth,
            ),
            ("GET /metrics", base + "/metrics", auth),
        ]
        results = []
        limits = httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        )
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            for name, url, headers in cases:
                n = args.requests if "metrics" not in name else max(20, args.requests // 10)
                lat = await measure(client, url, n, args.concurrency, headers)
                results.append((name, lat))
        servers.stop()
    base_p50 = statistics.median(results[0][1])
    print(f"  {'endpoint':<34} {'p50':>9} {'p99':>9} {'p50/bare':>9}")
    for name, lat in results:
        p50, p99 = pct(lat, 50), pct(lat, 99)
        print(f"  {name:<34} {p50 * 1000:7.2f}ms {p99 * 1000:7.2f}ms {p50 / base_p50:8.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
