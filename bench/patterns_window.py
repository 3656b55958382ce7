"""Failure patterns for a 24 h window of 1,000,000 demo lines: cold and cached.

    python bench/patterns_window.py [--lines 1000000] [--keep DIR]

Goals (issue 3): <= 2 s cold, <= 50 ms cached. Baseline in the same run: a bare
`count_over_time` of the error streams over the same window (what merely touching those lines
costs).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import demo_batches, ms, pct

from backend.config import load_config
from backend.facade import Backend

NS = 1_000_000_000


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="build the data dir here once and reuse it")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        data = args.keep
    else:
        tmp = tempfile.TemporaryDirectory()
        data = Path(tmp.name)
    settings = load_config(
        None, env={}, overrides={"data_dir": str(data), "embedded.retention": "0"}
    ).settings
    backend = await Backend.open(settings)
    end_file = data / "bench-end"
    if not end_file.exists():
        end = time.time_ns()
        t0 = time.perf_counter()
        for batch in demo_batches(args.lines, 24 * 3600, end):
            await backend.push(batch)
        print(f"built: {args.lines:,} lines in {time.perf_counter() - t0:.1f} s")
        end_file.write_text(str(end))
    end = int(end_file.read_text()) + NS
    start = end - 24 * 3600 * NS - 60 * NS

    t0 = time.perf_counter()
    await backend.query_instant(
        'sum(count_over_time({level=~"(?i)(error|err|fatal|critical|crit|panic|emerg|alert)"}[1441m]))',
        end,
    )
    base = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = await backend.failure_patterns(start, end)
    cold = time.perf_counter() - t0
    cached = []
    for _ in range(50):
        t0 = time.perf_counter()
        await backend.failure_patterns(start, end)
        cached.append(time.perf_counter() - t0)
    await backend.close()
    print(
        f"patterns: {len(report.patterns)} patterns from {report.error_lines:,} error lines "
        "in a 24 h window"
    )
    print(f"  baseline (count the error streams' lines) {ms(base)}")
    print(
        f"  cold  {ms(cold)}   ratio to baseline {cold / base:.1f}x   goal 2000 ms: "
        f"{'meets' if cold <= 2 else 'MISSES'}"
    )
    p50 = pct(cached, 50)
    print(f"  cached p50 {ms(p50)}   goal 50 ms: {'meets' if p50 <= 0.05 else 'MISSES'}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
