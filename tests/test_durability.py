"""A push is acknowledged only after its lines are committed: `kill -9` during heavy pushing
loses no acknowledged line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from backend.embedded.logstore import EmbeddedLogStore

PUSHER = textwrap.dedent(
    """
    import asyncio, sys, time
    from backend.embedded.logstore import EmbeddedLogStore
    from backend.models import LogEntry, Stream

    async def main(path):
        store = await EmbeddedLogStore.open(path, retention_s=0)
        base = time.time_ns()
        seq = 0
        while True:
            batch = [LogEntry(base + seq + i, f"seq={seq + i}") for i in range(500)]
            res = await store.push([Stream({"job": "durable"}, batch)])
            assert res.accepted == 500
            seq += 500
            print(seq, flush=True)  # everything below seq is acknowledged

    asyncio.run(main(sys.argv[1]))
    """
)


def test_kill_9_loses_no_acknowledged_line(tmp_path: Path) -> None:
    path = tmp_path / "durable.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", PUSHER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    acked = 0
    deadline = time.monotonic() + 30
    while acked < 20_000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # acknowledgements already printed before the kill
        acked = max(acked, int(line))
    assert acked >= 20_000, "the pusher did not get going"

    async def count() -> set[int]:
        store = await EmbeddedLogStore.open(path, retention_s=0)
        try:
            res = await store.query_range(
                '{job="durable"}', 0, time.time_ns() + 10**9, limit=100_000
            )
            return {int(e.line[4:]) for s in res.streams for e in s.entries}  # type: ignore[union-attr]
        finally:
            await store.close()

    seqs = asyncio.run(count())
    missing = set(range(acked)) - seqs
    assert not missing, f"{len(missing)} acknowledged lines lost, e.g. {sorted(missing)[:5]}"
