"""Summary overhead: keypress to first token, minus the fake server's own delay.

    python bench/summary_overhead.py [--presses 20] [--server-delay 0.2] [--big-lines 5000]

A keypress is `Backend.summarize(run_id, refresh=True)` on the embedded store: fetch the run's
task and logs, detect its failure signals, redact, compress, build the prompt, send it with the
real openai client to tests/fake_openai.py over local HTTP, and receive the first streamed chunk.
The server's own delay (its request arrival to its first chunk written, `--server-delay` plus its
own work) is subtracted: what remains is agentlog's overhead. Goal (issue 3): <= 300 ms.

Measured for a typical demo run (~50 lines) and for a big run (`--big-lines` lines, the most
`run_logs` fetches), warm (client built) and cold (the first press in a process pays the openai
import, ~0.4 s, unless the app called `OpenRouterSummarizer.warm_up()` at start).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time

from _common import ROOT, pct

sys.path.insert(0, str(ROOT / "tests"))

from fake_openai import FakeOpenAI, Reply

from backend.config import load_config
from backend.facade import Backend
from backend.models import LogEntry, Stream
from backend.summarize.openrouter import OpenRouterSummarizer

GOAL_S = 0.300
NS = 1_000_000_000


def run_lines(run_id: str, n: int) -> list[str]:
    """A run of n lines: steps, tool calls, a retry storm, a few distinct errors, the end."""
    import orjson

    c = {"run_id": run_id, "agent": "coder", "task": "refactor auth/session.py"}
    out = [orjson.dumps({"event": "run.start", "level": "info", "msg": "starting", **c}).decode()]
    i = 0
    while len(out) < n - 1:
        i += 1
        kind = i % 10
        if kind < 5:
            d = {"event": "step", "level": "info", "step": i, "msg": f"reading chunk {i} of file"}
        elif kind < 8:
            d = {"event": "tool.call", "level": "info", "step": i, "tool": "grep", "args": {"q": i}}
        elif kind == 8:
            d = {
                "event": "error",
                "level": "error",
                "step": i,
                "error.type": "RateLimitError",
                "error.message": f"rate limited by provider p: HTTP 429, retry after {i % 9}s",
            }
        else:
            d = {"level": "warn", "msg": f"retrying in {i % 5}s (attempt {i % 4 + 1}/4)"}
        out.append(orjson.dumps({**d, **c}).decode())
    out.append(
        orjson.dumps({"event": "run.end", "level": "error", "status": "failed", **c}).decode()
    )
    return out


async def seed(b: Backend, run_id: str, n: int) -> None:
    start = time.time_ns() - 3000 * NS
    lines = run_lines(run_id, n)
    entries = [
        LogEntry(start + k * NS // 1000, ln, {"run_id": run_id}) for k, ln in enumerate(lines)
    ]
    await b.push([Stream({"agent": "coder", "service_name": "bench"}, entries)])


async def press(b: Backend, fake: FakeOpenAI, run_id: str) -> tuple[float, float]:
    """(keypress -> first token, the server's own delay) of one press."""
    before = len(fake.server_delays)
    t0 = time.perf_counter()
    first = None
    async for chunk in b.summarize(run_id, refresh=True):
        if first is None and chunk.text:
            first = time.perf_counter() - t0
    assert first is not None and len(fake.server_delays) == before + 1
    return first, fake.server_delays[-1]


async def main_async(args: argparse.Namespace) -> None:
    with (
        FakeOpenAI(Reply(delay=args.server_delay, chunks=["a"] * 5)) as fake,
        tempfile.TemporaryDirectory() as tmp,
    ):
        overrides = {
            "data_dir": tmp,
            "summarizer.api_key": "sk-or-v1-bench",
            "summarizer.base_url": fake.base_url,
        }
        settings = load_config(None, env={}, overrides=overrides).settings
        b = await Backend.open(settings)
        try:
            assert isinstance(b.summarizer, OpenRouterSummarizer)
            await seed(b, "run-typical", 50)
            await seed(b, "run-big", args.big_lines)
            cold_total, cold_server = await press(b, fake, "run-typical")
            print(f"server delay per request: {args.server_delay * 1000:.0f} ms (subtracted)")
            print(
                f"cold first press (openai import + client in it): overhead "
                f"{(cold_total - cold_server) * 1000:7.1f} ms  ratio to goal "
                f"{(cold_total - cold_server) / GOAL_S:.2f}  (no warm_up(); see the last line)"
            )
            for run_id, label in (
                ("run-typical", "typical run (50 lines)"),
                ("run-big", f"big run ({args.big_lines} lines)"),
            ):
                over = []
                for _ in range(args.presses):
                    total, server = await press(b, fake, run_id)
                    over.append(total - server)
                p50, p95 = pct(over, 50), pct(over, 95)
                print(
                    f"warm, {label:24}: overhead p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  "
                    f"ratio to goal (p95/300 ms) {p95 / GOAL_S:.2f}  goal <= 300 ms: {'met' if p95 <= GOAL_S else 'MISSED'}"
                )
        finally:
            await b.summarizer.aclose()  # type: ignore[attr-defined]
            await b.close()


def cold_process_with_warm_up() -> None:
    """A fresh process that calls warm_up() at start (as the TUI does), then presses once."""
    code = f"""
import asyncio, sys, time
sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "bench")!r}, {str(ROOT / "tests")!r}]
from summary_overhead import run_cold
asyncio.run(run_cold())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    print(out.stdout.strip())


async def run_cold() -> None:
    with FakeOpenAI(Reply(chunks=["a"] * 5)) as fake, tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "data_dir": tmp,
            "summarizer.api_key": "k",
            "summarizer.base_url": fake.base_url,
        }
        b = await Backend.open(load_config(None, env={}, overrides=overrides).settings)
        try:
            assert isinstance(b.summarizer, OpenRouterSummarizer)
            await seed(b, "run-typical", 50)
            warm = asyncio.create_task(b.summarizer.warm_up())  # at app start, in the background
            await asyncio.sleep(1.0)  # the user looks at the screen before pressing
            await warm
            total, server = await press(b, fake, "run-typical")
            print(
                f"first press in a fresh process after warm_up(): overhead {(total - server) * 1000:7.1f} ms  "
                f"ratio to goal {(total - server) / GOAL_S:.2f}"
            )
        finally:
            await b.summarizer.aclose()  # type: ignore[attr-defined]
            await b.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presses", type=int, default=20)
    ap.add_argument("--server-delay", type=float, default=0.2)
    ap.add_argument("--big-lines", type=int, default=5000)
    args = ap.parse_args()
    asyncio.run(main_async(args))
    cold_process_with_warm_up()


if __name__ == "__main__":
    main()
