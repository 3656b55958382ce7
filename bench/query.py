"""Query speed on 1,000,000 demo lines over 24 h in ~20 streams (made by the demo backfill).

    python bench/query.py [--lines 1000000] [--keep DIR]

Goals (issue 2), p50: newest 100 lines of one stream <= 20 ms; a line filter matching ~0.1% of
lines, limit 100, <= 250 ms; `sum by (agent) (count_over_time(...[1m]))` over 24 h <= 1 s.
Each is printed next to the bare SQLite statement that fetches the same rows (the baseline), timed
in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from _common import demo_batches, ms, pct, timed, timed_sync

from backend.embedded.logstore import EmbeddedLogStore

NS = 1_000_000_000
CANDIDATES = [
    "context length exceeded",
    "JSONDecodeError",
    "rate limited by provider",
    "timed out after",
    "KeyError",
    "ValueError",
    "retry after",
    "cancelled",
]


async def build(path: Path, lines: int, end: int) -> None:
    store = await EmbeddedLogStore.open(path, retention_s=30 * 86400)
    t0 = time.perf_counter()
    n = 0
    for batch in demo_batches(lines, 24 * 3600, end):
        await store.push(batch)
        n += sum(len(s.entries) for s in batch)
    print(f"built: {n:,} lines in {time.perf_counter() - t0:.1f} s")
    await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="build the store here once and reuse it later")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        path = args.keep / "bench-query.sqlite3"
    else:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "bench-query.sqlite3"
    end_file = path.with_suffix(".end")
    if not path.exists():
        end = time.time_ns()
        await build(path, args.lines, end)
        end_file.write_text(str(end))
    end = int(end_file.read_text())
    start = end - 24 * 3600 * NS - 60 * NS
    end += NS

    store = await EmbeddedLogStore.open(path, retention_s=3650 * 86400)
    raw = sqlite3.connect(path)
    total, nstreams = raw.execute(
        "SELECT count(*), count(DISTINCT stream_id) FROM entries"
    ).fetchone()
    print(
        f"store: {total:,} lines, {nstreams} streams, {await store.size_bytes() / 1e6:.0f} MB on disk"
    )

    # 1. newest 100 lines of one stream
    sid, labels = raw.execute(
        "SELECT s.id, s.labels FROM streams s JOIN entries e ON e.stream_id = s.id "
        "GROUP BY s.id ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()
    import orjson

    lab = orjson.loads(labels)
    sel = "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(lab.items())) + "}"
    q1 = lambda: store.query_range(sel, start, end, limit=100)  # noqa: E731
    b1 = lambda: raw.execute(  # noqa: E731
        "SELECT id, ts, line, metadata FROM entries WHERE stream_id = ? AND ts >= ? AND ts < ? "
        "ORDER BY ts DESC LIMIT 100",
        (sid, start, end),
    ).fetchall()

    # 2. a line filter matching ~0.1% of lines
    best = None
    for c in CANDIDATES:
        (cnt,) = raw.execute(
            "SELECT count(*) FROM entries WHERE instr(line, ?) > 0", (c,)
        ).fetchone()
        if cnt and (best is None or abs(cnt / total - 0.001) < abs(best[1] / total - 0.001)):
            best = (c, cnt)
    assert best is not None
    needle, hits = best
    q2 = lambda: store.query_range(f'{{env="demo"}} |= "{needle}"', start, end, limit=100)  # noqa: E731
    b2 = lambda: raw.execute(  # noqa: E731
        "SELECT id, ts, line, metadata FROM entries WHERE ts >= ? AND ts < ? AND instr(line, ?) > 0 "
        "ORDER BY ts DESC LIMIT 100",
        (start, end, needle),
    ).fetchall()

    # 3. sum by (agent) (count_over_time(...[1m])) over 24 h, default step
    q3 = lambda: store.query_range(  # noqa: E731
        'sum by (agent) (count_over_time({env="demo"}[1m]))', start, end
    )
    b3 = lambda: raw.execute(  # noqa: E731
        "SELECT stream_id, ts / 60000000000, count(*) FROM entries WHERE ts >= ? AND ts < ? "
        "GROUP BY 1, 2",
        (start, end),
    ).fetchall()

    rows = [
        (f"newest 100 of {sel}", q1, b1, 30, 0.020),
        (f'line filter |= "{needle}" ({hits / total:.3%} of lines), limit 100', q2, b2, 20, 0.250),
        ("sum by (agent) (count_over_time([1m])) over 24 h", q3, b3, 5, 1.0),
    ]
    for name, q, b, runs, goal in rows:
        await q()  # warm
        ours = await timed(q, runs)
        base = timed_sync(b, runs)
        p50, p95 = pct(ours, 50), pct(ours, 95)
        verdict = "meets" if p50 <= goal else "MISSES"
        print(f"- {name}")
        print(
            f"    agentlog p50 {ms(p50)}  p95 {ms(p95)}   bare SQL p50 {ms(pct(base, 50))}   "
            f"ratio (SQL/agentlog) {pct(base, 50) / p50:.2f}   goal {goal * 1000:.0f} ms: {verdict}"
        )
    raw.close()
    await store.close()
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
