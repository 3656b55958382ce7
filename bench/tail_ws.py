"""Loki tail over WebSockets: 200 subscribers on `/loki/api/v1/tail` while 5,000 lines/s are pushed
to `/loki/api/v1/push`, through a real server on loopback.

    python bench/tail_ws.py [--seconds 10] [--rate 5000] [--subscribers 200] [--procs 4]

Goal (issue 6): p99 push-to-delivery <= 100 ms; drops reported (`dropped_entries`), none silent.
Each line carries its send time (wall clock, taken just before the push request is built);
delivery is when a subscriber has parsed the frame. Every subscriber counts the distinct lines it
got and the `dropped_entries` it was told about: lines neither delivered nor reported are silent
losses (must be 0). Baseline in the same run: 1 subscriber at the same rate.

The server (agentlog's app, auth off on loopback, rate limits off, tail limit raised) runs in a
background thread; the pusher (httpx2, one request every 10 ms) in the main thread; subscribers
(websockets client) in `--procs` processes, so their JSON parsing does not share the server's
GIL. Every run stops by itself: pushing lasts `--seconds`, then subscribers drain until 2 s pass
with nothing new (at most 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import orjson
import websockets
from _common import ROOT

from backend.config import load_config
from backend.facade import Backend
from backend.http.app import HttpOptions, TailLimits, create_app
from backend.http.limits import RateLimits
from backend.http.serve import Server, tcp_listener, uvicorn_config

assert ROOT
PUSH_EVERY = 0.01  # 100 pushes/s
BIN_MS = 0.1  # latency histogram resolution
MAX_BIN = 200_000  # 20 s
GOAL_MS = 100.0
QUERY = '{job="bench_tail"}'


class ServerThread:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = ""
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        settings = load_config(None, env={}, overrides={"data_dir": str(self.data_dir)}).settings
        backend = await Backend.open(settings)
        app = create_app(
            backend,
            tail_limits=TailLimits(max_per_tenant=10_000),
            options=HttpOptions(rate_limits=RateLimits(enabled=False)),
        )
        sock = tcp_listener("127.0.0.1", 0)
        srv = Server(uvicorn_config(app))
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        self.url = f"127.0.0.1:{sock.getsockname()[1]}"
        while not srv.started:  # noqa: ASYNC110 (uvicorn only offers the flag)
            await asyncio.sleep(0.01)
        self.ready.set()
        await self._stop.wait()
        srv.should_exit = True
        await task
        sock.close()
        await backend.close()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(120):
            raise RuntimeError("server did not start")
        if self.error is not None:
            raise RuntimeError("server failed to start") from self.error

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(60)


# ---------------------------------------------------------------- subscribers (child processes)


async def _subscribe(
    url: str, start_ns: int, n: int, ready: Any, pushed_done: Any
) -> dict[str, Any]:
    hist = [0] * (MAX_BIN + 1)
    seen: list[set[int]] = [set() for _ in range(n)]
    dropped = [0] * n
    dup = 0
    last_new = [time.monotonic()]
    uri = f"ws://{url}/loki/api/v1/tail?query={quote(QUERY)}&start={start_ns}&limit=1"
    conns = [await websockets.connect(uri, max_size=None) for _ in range(n)]
    ready.put(n)

    async def reader(i: int, ws: Any) -> None:
        nonlocal dup
        got = seen[i]
        try:
            async for msg in ws:
                now = time.time_ns()
                frame = orjson.loads(msg)
                dropped[i] += len(frame.get("dropped_entries") or ())
                for s in frame.get("streams") or ():
                    for _, line in s["values"]:
                        d = orjson.loads(line)
                        seq = d["seq"]
                        if seq in got:
                            dup += 1
                            continue
                        got.add(seq)
                        b = int((now - d["sent"]) / 1e6 / BIN_MS)
                        hist[min(max(b, 0), MAX_BIN)] += 1
                last_new[0] = time.monotonic()
        except websockets.ConnectionClosed:
            pass

    tasks = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(conns)]
    while not pushed_done.is_set():  # noqa: ASYNC110 (a process event)
        await asyncio.sleep(0.05)
    t_cap = time.monotonic() + 20
    while time.monotonic() - last_new[0] < 2 and time.monotonic() < t_cap:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for ws in conns:
        await ws.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"hist": hist, "received": [len(s) for s in seen], "dropped": dropped, "dup": dup}


def subscriber_process(url: str, start_ns: int, n: int, ready: Any, done: Any, out: Any) -> None:
    out.put(asyncio.run(_subscribe(url, start_ns, n, ready, done)))


# ---------------------------------------------------------------- pusher (main process)


async def push(url: str, rate: int, seconds: float) -> tuple[int, float, float]:
    """Push `rate` lines/s for `seconds`: (lines pushed, achieved seconds, max push time s)."""
    per = max(1, round(rate * PUSH_EVERY))
    seq = 0
    worst = 0.0
    async with httpx.AsyncClient(base_url=f"http://{url}", timeout=30) as client:
        t_start = time.perf_counter()
        t_end = t_start + seconds
        next_at = t_start
        while time.perf_counter() < t_end:
            now = time.time_ns()
            values = [
                [str(now + i), orjson.dumps({"seq": seq + i, "sent": now}).decode()]
                for i in range(per)
            ]
            t0 = time.perf_counter()
            r = await client.post(
                "/loki/api/v1/push",
                content=orjson.dumps(
                    {"streams": [{"stream": {"job": "bench_tail"}, "values": values}]}
                ),
                headers={"Content-Type": "application/json"},
            )
            worst = max(worst, time.perf_counter() - t0)
            if r.status_code != 204:
                raise RuntimeError(f"push: HTTP {r.status_code} {r.text[:200]}")
            seq += per
            next_at += PUSH_EVERY
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        return seq, time.perf_counter() - t_start, worst


def percentile(hist: list[int], p: float) -> float:
    total = sum(hist)
    if not total:
        return float("nan")
    want = p / 100 * total
    acc = 0
    for i, c in enumerate(hist):
        acc += c
        if acc >= want:
            return (i + 1) * BIN_MS
    return MAX_BIN * BIN_MS


def run_case(url: str, subscribers: int, procs: int, rate: int, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_ns = time.time_ns()
    procs = max(1, min(procs, subscribers))
    per = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
    ps = [
        ctx.Process(
            target=subscriber_process, args=(url, start_ns, n, ready, done, out), daemon=True
        )
        for n in per
    ]
    for p in ps:
        p.start()
    connected = sum(ready.get(timeout=120) for _ in ps)
    assert connected == subscribers
    time.sleep(0.5)  # let every tail reach the live phase
    pushed, took, worst = asyncio.run(push(url, rate, seconds))
    done.set()
    hist = [0] * (MAX_BIN + 1)
    received: list[int] = []
    dropped: list[int] = []
    dup = 0
    for _ in ps:
        r = out.get(timeout=120)
        hist = [a + b for a, b in zip(hist, r["hist"], strict=True)]
        received += r["received"]
        dropped += r["dropped"]
        dup += r["dup"]
    for p in ps:
        p.join(30)
    silent = sum(max(0, pushed - got - d) for got, d in zip(received, dropped, strict=True))
    return {
        "subs": subscribers,
        "pushed": pushed,
        "rate": pushed / took,
        "worst_push_ms": worst * 1000,
        "p50": percentile(hist, 50),
        "p99": percentile(hist, 99),
        "max": percentile(hist, 100),
        "delivered": sum(received),
        "dropped": sum(dropped),
        "silent": silent,
        "dup": dup,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--procs", type=int, default=4, help="subscriber processes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerThread(Path(tmp))
        server.start()
        try:
            rows = [
                run_case(server.url, 1, 1, args.rate, args.seconds),
                run_case(server.url, args.subscribers, args.procs, args.rate, args.seconds),
            ]
        finally:
            server.stop()
    print(
        f"tail_ws: {args.rate:,} lines/s asked for {args.seconds:g} s; "
        f"subscribers in {args.procs} processes; goal p99 <= {GOAL_MS:g} ms, 0 silent"
    )
    print(
        f"  {'subscribers':>11} {'pushed/s':>9} {'p50':>9} {'p99':>9} {'max':>9} "
        f"{'delivered':>10} {'dropped':>8} {'silent':>7} {'dup':>5} {'push max':>9}"
    )
    for r in rows:
        print(
            f"  {r['subs']:>11} {r['rate']:9.0f} {r['p50']:7.1f}ms {r['p99']:7.1f}ms "
            f"{r['max']:7.1f}ms {r['delivered']:>10,} {r['dropped']:>8,} {r['silent']:>7,} "
            f"{r['dup']:>5} {r['worst_push_ms']:7.1f}ms"
        )
    base, big = rows
    print(f"  p99 with {big['subs']} subscribers / p99 with 1: {big['p99'] / base['p99']:.1f}x")
    ok_lat = big["p99"] <= GOAL_MS
    ok_silent = big["silent"] == 0 and base["silent"] == 0
    if ok_lat and ok_silent:
        print(f"  goal met: p99 {big['p99']:.1f} ms <= {GOAL_MS:g} ms, no silent losses")
    else:
        if not ok_lat:
            print(f"  GOAL MISSED: p99 {big['p99']:.1f} ms > {GOAL_MS:g} ms")
        if not ok_silent:
            print(f"  GOAL MISSED: {big['silent'] + base['silent']:,} lines lost silently")


if __name__ == "__main__":
    main()
