"""HTTP port throughput: requests/s and p99 of `GET /api/tasks` and `GET /health` under a loopback
load of 100 keep-alive connections, against a bare ASGI hello endpoint under the same load; and
the `/metrics` scrape time with 10,000 runs in the store.

    python bench/port.py [--seconds 5] [--connections 100] [--clients 2] [--runs 10000]

The servers (agentlog's app and the baseline, a raw ASGI callable answering "hello": what uvicorn
and the loopback socket cost) run in one background thread with their own event loop and the same
uvicorn settings as `agentlog serve`. The load comes from `--clients` separate processes (raw
asyncio HTTP/1.1, keep-alive, one request in flight per connection), so the client does not share
the server's GIL. Every agentlog request carries a JWT (auth, rate limiter off, access log,
metrics, security headers all run). `GET /api/tasks?limit=50` is the same URL every time (what a
dashboard polling the port sends): answered from the task-list cache, which is read from the
task table once a second. The store holds `--runs` runs, applied as events.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
from _common import pct

from backend.config import load_config
from backend.facade import Backend
from backend.http.app import HttpOptions, create_app
from backend.http.auth import mint_token
from backend.http.limits import RateLimits
from backend.http.serve import Server, tcp_listener, uvicorn_config
from backend.models import DEFAULT_TENANT, AgentEvent, EventKind

SECRET = "bench-secret-0123456789-abcdefghijklmnopq"
NS = 1_000_000_000
AGENTS = ("planner", "coder", "reviewer", "retriever", "browser", "support", "researcher", "ops")
STATUSES = ("succeeded",) * 7 + ("failed", "timeout", "cancelled")


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


async def fill(backend: Backend, runs: int, now: int) -> None:
    """`runs` runs over the last hour, applied as events (start, one LLM call, end)."""
    span = 3000 * NS
    events: list[AgentEvent] = []
    for i in range(runs):
        start = now - span + i * span // runs
        rid = f"run-{i:012x}"
        agent = AGENTS[i % len(AGENTS)]
        events.append(
            AgentEvent(start, rid, EventKind.RUN_START, agent=agent, task=f"task {i % 977}")
        )
        events.append(
            AgentEvent(
                start + NS,
                rid,
                EventKind.LLM_CALL,
                agent=agent,
                model=("gpt-4o-mini", "claude-3-5-haiku")[i % 2],
                input_tokens=1000 + i % 500,
                output_tokens=100 + i % 50,
            )
        )
        if i % 50:  # 2% still running
            status = STATUSES[i % len(STATUSES)]
            failed = status != "succeeded"
            events.append(
                AgentEvent(
                    start + 20 * NS,
                    rid,
                    EventKind.RUN_END,
                    agent=agent,
                    status=status,
                    level="error" if failed else "info",
                    error_message="boom" if failed else "",
                )
            )
        if len(events) >= 20_000:
            await backend.tasks.apply_events(events)
            events = []
    if events:
        await backend.tasks.apply_events(events)


class Servers:
    """The bare app and agentlog's app, served from one background thread."""

    def __init__(self, data_dir: Path, runs: int) -> None:
        self.data_dir = data_dir
        self.runs = runs
        self.urls: dict[str, str] = {}
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = load_config(
            None, env={}, overrides={"data_dir": str(self.data_dir), "server.jwt_secret": SECRET}
        ).settings
        backend = await Backend.open(settings)
        await fill(backend, self.runs, time.time_ns())
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
        if not self.ready.wait(600):
            raise RuntimeError("servers did not start")
        if self.error is not None:
            raise RuntimeError("servers failed to start") from self.error

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(60)


# ---------------------------------------------------------------- the load (client processes)


async def _connection(
    host: str, port: int, request: bytes, t_end: float, lat: list[float]
) -> tuple[int, int]:
    """One keep-alive connection sending `request` until `t_end`: (ok, failed)."""
    reader, writer = await asyncio.open_connection(host, port)
    ok = bad = 0
    try:
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not handled by this client")
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status == 200:
                ok += 1
            else:
                bad += 1
    finally:
        writer.close()
    return ok, bad


async def _load(url: str, headers: dict[str, str], conns: int, seconds: float) -> Any:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    target = u.path + (f"?{u.query}" if u.query else "")
    head = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + "\r\n").encode()
    lat: list[float] = []
    t_end = time.perf_counter() + seconds
    results = await asyncio.gather(
        *(_connection(host, port, request, t_end, lat) for _ in range(conns))
    )
    return sum(r[0] for r in results), sum(r[1] for r in results), lat


def load_process(args: tuple[str, dict[str, str], int, float, Any]) -> None:
    url, headers, conns, seconds, out = args
    out.put(asyncio.run(_load(url, headers, conns, seconds)))


def under_load(
    url: str, headers: dict[str, str], conns: int, clients: int, seconds: float
) -> tuple[float, float, float, int]:
    """(requests/s, p50 s, p99 s, non-200 count) with `conns` connections over `clients`
    processes."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    per = [conns // clients + (1 if i < conns % clients else 0) for i in range(clients)]
    procs = [
        ctx.Process(target=load_process, args=((url, headers, n, seconds, out),), daemon=True)
        for n in per
        if n
    ]
    for p in procs:
        p.start()
    ok = bad = 0
    lat: list[float] = []
    for _ in procs:
        o, b, lt = out.get(timeout=seconds + 120)
        ok, bad = ok + o, bad + b
        lat.extend(lt)
    for p in procs:
        p.join(30)
    return (ok + bad) / seconds, pct(lat, 50), pct(lat, 99), bad


async def scrape(url: str, headers: dict[str, str], n: int) -> tuple[list[float], int]:
    out: list[float] = []
    size = 0
    async with httpx.AsyncClient(timeout=120) as client:
        await client.get(url, headers=headers)  # warm up
        for _ in range(n):
            t0 = time.perf_counter()
            r = await client.get(url, headers=headers)
            out.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"/metrics: HTTP {r.status_code} {r.text[:200]}")
            size = len(r.content)
    return out, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        servers = Servers(Path(tmp), args.runs)
        t0 = time.perf_counter()
        servers.start()
        print(
            f"port: {args.runs:,} runs applied in {time.perf_counter() - t0:.1f} s; "
            f"{args.connections} connections from {args.clients} client processes, "
            f"{args.seconds:g} s per endpoint"
        )
        tok = mint_token(SECRET, subject="bench", role="admin", tenant=DEFAULT_TENANT, ttl_s=3600)
        auth = {"Authorization": f"Bearer {tok}"}
        base = servers.urls["agentlog"]
        try:
            with httpx.Client(timeout=60) as c:  # the tasks are there, and warm the cache
                body = c.get(base + "/api/tasks?limit=50", headers=auth).json()
                assert len(body["tasks"]) == 50, body
            cases = [
                ("bare ASGI hello (baseline)", servers.urls["bare"] + "/", {}),
                ("GET /health", base + "/health", {}),
                ("GET /api/tasks?limit=50", base + "/api/tasks?limit=50", auth),
            ]
            rows = []
            for name, url, headers in cases:
                rows.append(
                    (name, *under_load(url, headers, args.connections, args.clients, args.seconds))
                )
            lat, size = asyncio.run(scrape(base + "/metrics", auth, args.scrapes))
        finally:
            servers.stop()
    base_rps = rows[0][1]
    print(f"  {'endpoint':<30} {'req/s':>9} {'p50':>9} {'p99':>9} {'non-200':>8} {'vs bare':>8}")
    for name, rps, p50, p99, bad in rows:
        print(
            f"  {name:<30} {rps:9.0f} {p50 * 1000:7.2f}ms {p99 * 1000:7.2f}ms {bad:8d} "
            f"{rps / base_rps:7.2f}x"
        )
    print(
        f"  GET /metrics with {args.runs:,} runs ({size / 1024:.0f} KiB, {args.scrapes} scrapes, "
        f"one at a time): p50 {pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
