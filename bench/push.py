"""Push speed: lines/s into the embedded store through the HTTP push endpoint (JSON, and protobuf
with raw snappy), batches of 1,000, next to the in-process Backend.push path, in the same run.

    python bench/push.py [--lines 100000] [--concurrency 1]

Each path gets a fresh store (so no line is a duplicate of an earlier run). The HTTP server is
`agentlog serve` (backend.http.serve.serve) in a child process, so the client's work is not
counted against the server; request bodies are encoded before the clock starts (that is the
pusher's cost, not ours). Ratio = HTTP lines/s / in-process lines/s (1.0 = HTTP costs nothing).
Also printed: the server's decode cost alone (body -> Streams) per format.
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
from pathlib import Path

import cramjam
import httpx2 as httpx
import orjson
from _common import ROOT, demo_batches

from backend.config import load_config
from backend.facade import Backend
from backend.http.push_decode import PushLimits, decode_body, push_request_class
from backend.models import Stream

SERVER = """
import asyncio, sys
from backend.config import load_config
from backend.http.serve import serve
settings = load_config(None, env={}, overrides={"data_dir": sys.argv[1]}).settings
asyncio.run(serve(settings, host="127.0.0.1", port=int(sys.argv[2])))
"""


def json_body(batch: list[Stream]) -> bytes:
    return orjson.dumps(
        {
            "streams": [
                {
                    "stream": s.labels,
                    "values": [
                        [str(e.ts), e.line, e.metadata] if e.metadata else [str(e.ts), e.line]
                        for e in s.entries
                    ],
                }
                for s in batch
            ]
        }
    )


def proto_body(batch: list[Stream]) -> bytes:
    req = push_request_class()()
    for s in batch:
        st = req.streams.add()
        st.labels = ("{" + ", ".join(f'{k}="{v}"' for k, v in s.labels.items()) + "}").encode()
        for e in s.entries:
            en = st.entries.add()
            en.timestamp.seconds, en.timestamp.nanos = divmod(e.ts, 1_000_000_000)
            en.line = e.line.encode()
            for k, v in e.metadata.items():
                en.structuredMetadata.add(name=k.encode(), value=v.encode())
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_push(
    data_dir: Path, bodies: list[bytes], ctype: str, concurrency: int
) -> tuple[float, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(data_dir), str(port), env=env, stderr=subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for _ in range(400):
                try:
                    if (await client.get("/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("agentlog serve did not come up")
            queue = list(reversed(bodies))
            failures = 0

            async def worker() -> None:
                nonlocal failures
                while queue:
                    body = queue.pop()
                    r = await client.post(
                        "/loki/api/v1/push", content=body, headers={"Content-Type": ctype}
                    )
                    failures += r.status_code != 204

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - t0, failures
    finally:
        proc.terminate()  # SIGTERM: serve() stops gracefully and closes the store
        await asyncio.wait_for(proc.wait(), 30)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    args = ap.parse_args()
    batches = list(demo_batches(args.lines, 6 * 3600, time.time_ns()))
    n = sum(len(s.entries) for b in batches for s in b)
    json_bodies = [json_body(b) for b in batches]
    proto_bodies = [proto_body(b) for b in batches]
    mb_json = sum(map(len, json_bodies)) / 1e6
    mb_proto = sum(map(len, proto_bodies)) / 1e6
    print(
        f"push: {n:,} demo lines in {len(batches)} batches of <= 1,000; "
        f"JSON {mb_json:.1f} MB, protobuf+snappy {mb_proto:.1f} MB; "
        f"{args.concurrency} request(s) in flight"
    )

    limits = PushLimits()
    t0 = time.perf_counter()
    for body in json_bodies:
        decode_body(body, "application/json", "", limits)
    dec_json = time.perf_counter() - t0
    t0 = time.perf_counter()
    for body in proto_bodies:
        decode_body(body, "application/x-protobuf", "", limits)
    dec_proto = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        backend = await Backend.open(
            load_config(None, env={}, overrides={"data_dir": str(d / "inproc")}).settings
        )
        t0 = time.perf_counter()
        for b in batches:
            await backend.push(b)
        inproc = time.perf_counter() - t0
        await backend.close()
        http_json, fail_j = await http_push(
            d / "json", json_bodies, "application/json", args.concurrency
        )
        http_proto, fail_p = await http_push(
            d / "proto", proto_bodies, "application/x-protobuf", args.concurrency
        )

    def rate(s: float) -> str:
        return f"{n / s:>10,.0f} lines/s"

    print(f"  in-process Backend.push (baseline)          {rate(inproc)}")
    print(
        f"  HTTP POST /loki/api/v1/push, JSON           {rate(http_json)}   ratio {inproc / http_json:.2f}"
        + (f"  ({fail_j} non-204!)" if fail_j else "")
    )
    print(
        f"  HTTP POST /loki/api/v1/push, protobuf+snappy {rate(http_proto)}  ratio {inproc / http_proto:.2f}"
        + (f"  ({fail_p} non-204!)" if fail_p else "")
    )
    print(f"  decode only, JSON                           {rate(dec_json)}")
    print(f"  decode only, protobuf+snappy                {rate(dec_proto)}")


if __name__ == "__main__":
    asyncio.run(main())
