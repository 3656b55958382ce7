"""Live tail over WebSockets: 200 subscribers while 5,000 lines/s are pushed to
`/loki/api/v1/push`, through a real server on loopback.

    python bench/tail_ws.py [--seconds 10] [--rate 5000] [--subscribers 200] [--procs 4]

Goal (issue 6): p99 push-to-delivery <= 100 ms; drops reported, none silent.

Cases, each measured in the same run:
- baseline: 1 subscriber following every line (Loki's `/loki/api/v1/tail`);
- errors: 200 subscribers, each following the errors of one agent of 25 (`{job=...,
  agent="a07"} |= "failed"`; 2% of the lines) - on-call engineers watching for trouble;
- fleet: 200 subscribers, each following every line of one agent of 25 (8 per agent, 200
  lines/s each) while the 5,000 lines/s come from all 25;
- firehose: 200 subscribers all following every line (1,000,000 line deliveries/s, about
  150 MB/s of frames), on Loki's tail (<= 100 entries a frame, as Loki) and on
  `/api/logs/tail` (<= 500 a frame).

Each line carries its agent, a sequence number within that agent and its send time (wall
clock, taken just before the push request is built; the pusher also writes each push's send
time to a table shared with the subscribers); delivery is when a subscriber has parsed the
frame. Every subscriber counts the distinct lines it got (a run of consecutive numbers is
taken from its first and last line and the send-time table; anything else line by line: the
measuring side must not be what is slow) and the drops it was told about: lines neither
delivered nor reported are silent losses (must be 0).

The server (agentlog's app, auth off on loopback, rate limits off, tail limit raised from
Loki's 10 per tenant) runs in its own process; the pusher (one request every 10 ms on a fixed
schedule, over up to 8 keep-alive connections) in the main process; subscribers (websockets'
Sans-I/O client on bare asyncio transports, no compression) in `--procs` processes. On a small
machine they all share the same cores, so the load generators are kept lean, and the CPU each
side used is printed: when together they use every core, latency is queueing, not the tail.
Every case stops by itself: pushing lasts `--seconds`, then subscribers drain until 2 s pass
with nothing new (at most 20 s).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from _common import ROOT
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from backend.config import load_config
from backend.facade import Backend, settle_heap
from backend.http.app import HttpOptions, TailLimits, create_app
from backend.http.limits import RateLimits
from backend.http.serve import Server, tcp_listener, uvicorn_config

assert ROOT
PUSH_EVERY = 0.01  # 100 pushes/s
MAX_PUSHES_IN_FLIGHT = 8  # keep-alive connections of the pusher
SEQ_CAP = 2_000_000  # sequence numbers a subscriber can account for (400 s at 5,000/s)
BIN_MS = 0.1  # latency histogram resolution
MAX_BIN = 200_000  # 20 s
GOAL_MS = 100.0
JOB = "bench_tail"
FLEET_AGENTS = 25
MSG = "tool call finished: search_docs returned 12 results in 340 ms (step 7 of run)"
ERROR_MSG = "tool call failed: search_docs raised TimeoutError after 30 s (step 7 of run)"
ERROR_EVERY = 50  # every 50th line of an agent is an error (2% of the lines)


async def _serve(data_dir: Path, url_q: Any, stop: Any) -> None:
    settings = load_config(None, env={}, overrides={"data_dir": str(data_dir)}).settings
    backend = await Backend.open(settings)
    app = create_app(
        backend,
        tail_limits=TailLimits(max_per_tenant=10_000),
        options=HttpOptions(rate_limits=RateLimits(enabled=False)),
    )
    sock = tcp_listener("127.0.0.1", 0)
    srv = Server(uvicorn_config(app))
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:  # noqa: ASYNC110 (uvicorn only offers the flag)
        await asyncio.sleep(0.01)
    settle_heap()  # as `agentlog serve` does once started
    url_q.put((f"127.0.0.1:{sock.getsockname()[1]}", os.getpid()))
    while not stop.is_set():  # noqa: ASYNC110 (a process event)
        await asyncio.sleep(0.1)
    srv.should_exit = True
    await task
    sock.close()
    await backend.close()


def server_process(data_dir: str, url_q: Any, stop: Any) -> None:
    asyncio.run(_serve(Path(data_dir), url_q, stop))


class ServerProcess:
    def __init__(self, data_dir: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._url_q, self._stop = ctx.Queue(), ctx.Event()
        self._proc = ctx.Process(
            target=server_process, args=(str(data_dir), self._url_q, self._stop), daemon=True
        )
        self.url = ""
        self.pid = 0

    def start(self) -> None:
        self._proc.start()
        self.url, self.pid = self._url_q.get(timeout=120)
        print(f"server pid {self.pid} (for a profiler)", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(60)


# ---------------------------------------------------------------- subscribers (child processes)


def _uri(url: str, route: str, query: str, start_ns: int) -> str:
    path = "/loki/api/v1/tail" if route == "loki" else "/api/logs/tail"
    return f"ws://{url}{path}?query={quote(query)}&start={start_ns}&limit=1"


def _frame_lines(frame: dict[str, Any]) -> tuple[list[list[str]], int]:
    """(lists of lines, one per stream, and the drops reported) of a Loki or API frame."""
    kind = frame.get("type")
    if kind == "entries":
        return [[e["line"] for e in s["entries"]] for s in frame["streams"]], 0
    if "streams" in frame:
        groups = [[v[1] for v in s["values"]] for s in frame["streams"]]
        return groups, len(frame.get("dropped_entries") or ())
    if kind == "dropped":
        return [], int(frame["count"])
    return [], 0


class _Socket(asyncio.Protocol):
    """One tail subscriber: a Sans-I/O WebSocket client (websockets' ClientProtocol) on a bare
    asyncio transport - no task, queue or assembler per message, so the measuring side stays
    light next to the server on the same cores. `on_text` gets each text message."""

    def __init__(self, uri: str, on_text: Any) -> None:
        self.ws = ClientProtocol(parse_uri(uri), max_size=None)
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.TEXT:
                    self.on_text(event.data)
            elif not self.open.done():  # the handshake's response
                ok = getattr(event, "status_code", 0) == 101
                self.open.set_result(None) if ok else self.open.set_exception(
                    RuntimeError(f"tail handshake failed: {event!r}")
                )
        self._flush()  # pongs, close frames

    def _flush(self) -> None:
        if self.transport is not None:
            for chunk in self.ws.data_to_send():
                if chunk:
                    self.transport.write(chunk)
                else:
                    self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.open.done():
            self.open.set_exception(exc or ConnectionError("closed before the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.ws.send_close(1000)
            self._flush()
            self.transport.close()


async def _subscribe(
    job: dict[str, Any], sent_at: Any, ready: Any, pushed_done: Any
) -> dict[str, Any]:
    queries: list[str] = job["queries"]
    per: int = job["per"]
    n = len(queries)
    hist = [0] * (MAX_BIN + 1)
    seen = [bytearray(SEQ_CAP) for _ in range(n)]  # seen[i][seq] == 1: delivered to i
    received = [0] * n
    dropped = [0] * n
    dup = 0
    last_new = [time.monotonic()]

    def count(i: int, lo: int, hi: int, sent: int, now: int) -> None:
        """Lines lo..hi-1 (one send time) reached subscriber i."""
        nonlocal dup
        if hi <= lo:
            return
        got = seen[i]
        again = got.count(1, lo, hi)
        dup += again
        received[i] += hi - lo - again
        got[lo:hi] = b"\x01" * (hi - lo)
        bucket = int((now - sent) / 1e6 / BIN_MS)
        hist[min(max(bucket, 0), MAX_BIN)] += hi - lo - again

    def handler(i: int) -> Any:
        def on_text(msg: bytes) -> None:
            now = time.time_ns()
            groups, drops = _frame_lines(orjson.loads(msg))
            dropped[i] += drops
            for lines in groups:
                if not lines:
                    continue
                a, b = orjson.loads(lines[0])["seq"], orjson.loads(lines[-1])["seq"]
                # One push = `per` consecutive numbers per agent sharing one send time, which
                # the pusher also wrote to the shared `sent_at` table: a run of consecutive
                # numbers needs only its first and last line parsed.
                if b - a == len(lines) - 1:
                    for p in range(a // per, b // per + 1):
                        count(i, max(a, p * per), min(b + 1, (p + 1) * per), sent_at[p], now)
                else:
                    for line in lines:
                        d = orjson.loads(line)
                        count(i, d["seq"], d["seq"] + 1, d["sent"], now)
            last_new[0] = time.monotonic()

        return on_text

    loop = asyncio.get_running_loop()
    host, port = job["url"].rsplit(":", 1)
    socks: list[_Socket] = []
    for i, q in enumerate(queries):
        uri = _uri(job["url"], job["route"], q, job["start_ns"])
        _, sock = await loop.create_connection(
            lambda uri=uri, i=i: _Socket(uri, handler(i)), host, int(port)
        )
        await sock.open
        socks.append(sock)
    ready.put(n)
    while not pushed_done.is_set():  # noqa: ASYNC110 (a process event)
        await asyncio.sleep(0.05)
    t_cap = time.monotonic() + 20
    while time.monotonic() - last_new[0] < 2 and time.monotonic() < t_cap:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for sock in socks:
        sock.close()
    await asyncio.wait([asyncio.ensure_future(s.closed) for s in socks], timeout=5)
    return {"hist": hist, "received": received, "dropped": dropped, "dup": dup}


def subscriber_process(job: dict[str, Any], sent_at: Any, ready: Any, done: Any, out: Any) -> None:
    # The counting makes no reference cycles; the cyclic collector's passes over the parsed
    # frames paused delivery in these processes by up to 150 ms (the measuring side, not the
    # server: firehose-api max 245-262 ms with it, 92-105 ms without).
    gc.disable()
    out.put(asyncio.run(_subscribe(job, sent_at, ready, done)))


# ---------------------------------------------------------------- pusher (main process)


def agent_name(k: int) -> str:
    return f"a{k:02d}"


def _line(seq: int, sent: int) -> str:
    msg = ERROR_MSG if seq % ERROR_EVERY == 0 else MSG
    return orjson.dumps({"seq": seq, "sent": sent, "msg": msg}).decode()


class _HttpConn:
    """A keep-alive HTTP/1.1 connection that posts and reads the (bodyless) reply: the
    pusher's own cost per request stays small."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, host: str, path: str, body: bytes) -> tuple[int, bytes]:
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length) if length else b""


async def push(
    url: str, agents: int, per: int, seconds: float, sent_at: Any
) -> tuple[int, float, float]:
    """Every 10 ms on a fixed schedule (several in flight when the server is slow, as a fleet
    would: up to MAX_PUSHES_IN_FLIGHT connections), push `per` lines for each of `agents`
    agents: (pushes made, achieved seconds, max push time s). Push k's send time goes into the
    line and into `sent_at[k]`."""
    host, port = url.rsplit(":", 1)
    pool: asyncio.Queue[_HttpConn] = asyncio.Queue()
    conns = [
        _HttpConn(*await asyncio.open_connection(host, int(port)))
        for _ in range(MAX_PUSHES_IN_FLIGHT)
    ]
    for c in conns:
        pool.put_nowait(c)
    worst = 0.0
    pending: set[asyncio.Task[None]] = set()

    async def one(seq: int) -> None:
        nonlocal worst
        now = time.time_ns()
        sent_at[seq // per] = now
        streams = [
            {
                "stream": {"job": JOB, "agent": agent_name(k)},
                "values": [[str(now + i), _line(seq + i, now)] for i in range(per)],
            }
            for k in range(agents)
        ]
        body = orjson.dumps({"streams": streams})
        conn = await pool.get()
        t0 = time.perf_counter()
        try:
            status, reply = await conn.post(url, "/loki/api/v1/push", body)
        finally:
            pool.put_nowait(conn)
        worst = max(worst, time.perf_counter() - t0)
        if status != 204:
            raise RuntimeError(f"push: HTTP {status} {reply[:200]!r}")

    pushes = 0
    t_start = time.perf_counter()
    t_end = t_start + seconds
    next_at = t_start
    while time.perf_counter() < t_end and pushes < len(sent_at):
        task = asyncio.create_task(one(pushes * per))
        pending.add(task)
        task.add_done_callback(pending.discard)
        pushes += 1
        next_at += PUSH_EVERY
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    await asyncio.gather(*pending)
    took = time.perf_counter() - t_start
    for c in conns:
        c.writer.close()
    return pushes, took, worst


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


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes (0: this one); 0 without /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid or 'self'}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_case(
    name: str,
    url: str,
    server_pid: int,
    route: str,
    subscribers: int,
    agents: int,
    errors_only: bool,
    args: argparse.Namespace,
) -> dict[str, Any]:
    per = max(1, round(args.rate * PUSH_EVERY / agents))  # lines per agent per push
    if agents == 1:
        queries = [f'{{job="{JOB}"}}'] * subscribers
    else:
        queries = [f'{{job="{JOB}", agent="{agent_name(i % agents)}"}}' for i in range(subscribers)]
    if errors_only:
        queries = [q + ' |= "failed"' for q in queries]
    ctx = multiprocessing.get_context("spawn")
    ready, out, done = ctx.Queue(), ctx.Queue(), ctx.Event()
    # Each push's send time, shared with the subscribers (int64 ns; written before the push).
    sent_at = ctx.Array("q", int(args.seconds / PUSH_EVERY) + 100, lock=False)
    start_ns = time.time_ns()
    procs = max(1, min(args.procs, subscribers))
    chunks = [queries[i::procs] for i in range(procs)]
    ps = [
        ctx.Process(
            target=subscriber_process,
            args=(
                {"url": url, "route": route, "queries": q, "per": per, "start_ns": start_ns},
                sent_at,
                ready,
                done,
                out,
            ),
            daemon=True,
        )
        for q in chunks
    ]
    for p in ps:
        p.start()
    connected = sum(ready.get(timeout=120) for _ in ps)
    assert connected == subscribers
    time.sleep(0.5)  # let every tail reach the live phase
    pids = {"server": [server_pid], "subscribers": [p.pid for p in ps if p.pid], "pusher": [0]}
    cpu0 = {k: cpu_seconds(v) for k, v in pids.items()}
    pushes, took, worst = asyncio.run(push(url, agents, per, args.seconds, sent_at))
    cpu = {k: (cpu_seconds(v) - cpu0[k]) / took for k, v in pids.items()}
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
    each = pushes * per  # lines of one agent
    if errors_only:
        each = len(range(0, each, ERROR_EVERY))
    silent = sum(max(0, each - got - d) for got, d in zip(received, dropped, strict=True))
    return {
        "case": name,
        "route": route,
        "subs": subscribers,
        "rate": pushes * per * agents / took,
        "worst_push_ms": worst * 1000,
        "p50": percentile(hist, 50),
        "p99": percentile(hist, 99),
        "max": percentile(hist, 100),
        "delivered": sum(received),
        "dropped": sum(dropped),
        "silent": silent,
        "dup": dup,
        "cpu": cpu,
    }


CASES = {
    # name: (route, subscribers (None: --subscribers), agents, errors only)
    "baseline": ("loki", 1, 1, False),
    "errors": ("loki", None, FLEET_AGENTS, True),
    "fleet": ("loki", None, FLEET_AGENTS, False),
    "firehose": ("loki", None, 1, False),
    "firehose-api": ("api", None, 1, False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--subscribers", type=int, default=200)
    ap.add_argument("--procs", type=int, default=4, help="subscriber processes")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    args = ap.parse_args()
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s): {', '.join(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp))
        server.start()
        try:
            for name in names:
                route, subs, agents, errors_only = CASES[name]
                n = args.subscribers if subs is None else subs
                rows.append(
                    run_case(name, server.url, server.pid, route, n, agents, errors_only, args)
                )
        finally:
            server.stop()
    print(
        f"tail_ws: {args.rate:,} lines/s asked for {args.seconds:g} s; "
        f"subscribers in {args.procs} processes; goal p99 <= {GOAL_MS:g} ms, 0 silent"
    )
    print(
        f"  {'case':<13} {'route':<5} {'subs':>4} {'pushed/s':>9} {'p50':>9} {'p99':>9} "
        f"{'max':>9} {'delivered':>10} {'dropped':>8} {'silent':>6} {'dup':>5} {'push max':>9}"
    )
    for r in rows:
        print(
            f"  {r['case']:<13} {r['route']:<5} {r['subs']:>4} {r['rate']:9.0f} "
            f"{r['p50']:7.1f}ms {r['p99']:7.1f}ms {r['max']:7.1f}ms {r['delivered']:>10,} "
            f"{r['dropped']:>8,} {r['silent']:>6,} {r['dup']:>5} {r['worst_push_ms']:7.1f}ms"
        )
    cores = os.cpu_count() or 1
    print(f"  CPU while pushing, in cores (this machine has {cores}):")
    for r in rows:
        c = r["cpu"]
        print(
            f"  {r['case']:<13} server {c['server']:.2f}, subscribers {c['subscribers']:.2f}, "
            f"pusher {c['pusher']:.2f}, together {sum(c.values()):.2f}"
        )
    base = next((r for r in rows if r["case"] == "baseline"), None)
    for r in rows:
        if r is base:
            continue
        ratio = f" ({r['p99'] / base['p99']:.1f}x the baseline's)" if base else ""
        short = r["rate"] < 0.95 * args.rate
        ok = r["p99"] <= GOAL_MS and r["silent"] == 0 and not short
        verdict = "goal met" if ok else "GOAL MISSED"
        why = f"p99 {r['p99']:.1f} ms{ratio}, {r['silent']:,} silent"
        if short:
            why += f", only {r['rate']:,.0f} lines/s pushed"
        print(f"  {r['case']}: {verdict}: {why}")


if __name__ == "__main__":
    main()
