"""Ingest speed: lines/s through the push path into the embedded store, batches of 1,000, next to a
raw sqlite3 executemany of the same rows into the same schema, in the same run.

    python bench/ingest.py [--lines 200000]

Goal (issue 2): store push / raw executemany >= 0.4.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

import orjson
from _common import demo_batches

from backend.config import load_config
from backend.embedded.logstore import _SCHEMA, EmbeddedLogStore
from backend.facade import Backend


def raw_executemany(
    path: Path, batches: list[list[tuple[int, int, int, str, str | None]]]
) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    t0 = time.perf_counter()
    for rows in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR IGNORE INTO entries (stream_id, ts, h, line, metadata) VALUES (?,?,?,?,?)",
            rows,
        )
        conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    conn.close()
    return dt


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    end = time.time_ns()
    batches = list(demo_batches(args.lines, 6 * 3600, end))
    n = sum(len(s.entries) for b in batches for s in b)
    stream_ids: dict[str, int] = {}
    raw_rows = []
    h = 0
    for b in batches:
        rows = []
        for s in b:
            sid = stream_ids.setdefault(
                orjson.dumps(s.labels, option=orjson.OPT_SORT_KEYS).decode(), len(stream_ids) + 1
            )
            for e in s.entries:
                h += 1
                meta = (
                    orjson.dumps(e.metadata, option=orjson.OPT_SORT_KEYS).decode()
                    if e.metadata
                    else None
                )
                rows.append((sid, e.ts, h, e.line, meta))
        raw_rows.append(rows)
    print(f"ingest: {n:,} demo lines in {len(batches)} batches of <= 1,000")

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        raw_s = raw_executemany(d / "raw.sqlite3", raw_rows)

        store = await EmbeddedLogStore.open(d / "store.sqlite3", retention_s=30 * 86400)
        t0 = time.perf_counter()
        for b in batches:
            await store.push(b)
        store_s = time.perf_counter() - t0
        size = await store.size_bytes()
        await store.close()

        loaded = load_config(None, env={}, overrides={"data_dir": str(d / "facade")})
        backend = await Backend.open(loaded.settings)
        t0 = time.perf_counter()
        for b in batches:
            await backend.push(b)
        facade_s = time.perf_counter() - t0
        runs = await backend.task_counts()
        await backend.close()

    def rate(s: float) -> str:
        return f"{n / s:>10,.0f} lines/s"

    print(f"  raw sqlite3 executemany (baseline)      {rate(raw_s)}")
    print(
        f"  EmbeddedLogStore.push                   {rate(store_s)}   ratio {raw_s / store_s:.2f}  (goal >= 0.4)"
    )
    print(
        f"  Backend.push (store + task table)       {rate(facade_s)}   ratio {raw_s / facade_s:.2f}"
    )
    print(f"  store size on disk: {size / 1e6:.1f} MB; runs folded: {sum(runs.values()):,}")


if __name__ == "__main__":
    asyncio.run(main())
