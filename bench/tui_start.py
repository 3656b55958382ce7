"""Cold start: a fresh Python process to the dashboard's first frame, and to its first rows.

    python bench/tui_start.py [--repeat 5]

Goal (issue 4): cold start to first frame <= 1.5 s, with the share of it spent importing.
Baseline in the same run: a bare `python -c pass` process (what any Python program pays).
The store holds an hour of the demo fleet (8 agents); the app runs headless at 80x24.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

from backend.config import Settings
from backend.demo.fleet import FleetOptions, run_fleet
from backend.facade import Backend

CHILD = r"""
import sys, time, json
t_spawned = float(sys.argv[2])
t0 = time.time()
from backend.config import Settings
from tui.app import AgentlogApp
t_imported = time.time()
marks = {}
app = AgentlogApp(Settings(data_dir=sys.argv[1]))
inner = app._display
def display(*a, **k):
    now = time.time()
    marks.setdefault("frame", now)
    dash = app.dashboard if app.screen_stack else None
    if dash is not None and dash.table.keys and "rows" not in marks:
        marks["rows"] = now
        app.exit()
    return inner(*a, **k)
app._display = display
app.run(headless=True, size=(80, 24))
print(json.dumps({
    "interpreter": t0 - t_spawned,
    "imports": t_imported - t0,
    "frame": marks["frame"] - t_spawned,
    "rows": marks.get("rows", float("nan")) - t_spawned,
}))
"""


async def prepare(data_dir: Path) -> None:
    backend = await Backend.open(Settings(data_dir=data_dir))
    try:
        await run_fleet(backend.push, FleetOptions(agents=8, seed=7, backfill_s=3600))
    finally:
        await backend.close()


def spawn(args: list[str]) -> tuple[float, str]:
    t = time.time()
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    return time.time() - t, out


def main(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(prepare(Path(tmp)))
        bare = [spawn(["-c", "pass"])[0] for _ in range(repeat)]
        runs = []
        for _ in range(repeat):
            _, out = spawn(["-c", CHILD, tmp, repr(time.time())])
            runs.append(json.loads(out.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    frame, rows = med["frame"], med["rows"]
    print(f"tui cold start: median of {repeat} fresh processes, headless 80x24\n")
    print(f"  bare `python -c pass` (baseline)       {statistics.median(bare) * 1000:7.0f} ms")
    print(f"  interpreter up                         {med['interpreter'] * 1000:7.0f} ms")
    print(f"  imports (textual, tui, backend)        {med['imports'] * 1000:7.0f} ms")
    print(
        f"  first frame                            {frame * 1000:7.0f} ms   "
        f"goal <= 1500 ms: {'met' if frame <= 1.5 else 'NOT met'}"
    )
    print(f"  first rows of runs on screen           {rows * 1000:7.0f} ms")
    print(
        f"\n  import share of the first frame: {med['imports'] / frame:.0%}; "
        f"first frame = {frame / statistics.median(bare):.1f}x a bare interpreter"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    main(ap.parse_args().repeat)
