"""CLI verbs for failure patterns and analytics: `patterns` and `analytics`."""

from __future__ import annotations

import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from . import output as out

if TYPE_CHECKING:
    from .main import Ctx

NS = 1_000_000_000
KIND_WORD = {
    "error": "error",
    "loop": "loop",
    "retry_storm": "storm",
    "stall": "stall",
    "cost_spike": "cost",
}


def add_parsers(verb: Any) -> None:
    """Register the verbs on the CLI's sub-parser factory `verb(name, help)`."""
    p = verb("patterns", "failure patterns: error templates and agent failure signals")
    p.add_argument("--since", metavar="D", default="1h", help="window length (1h)")
    p.add_argument("--agent", metavar="A", help="only this agent")
    p.add_argument("--run", metavar="RUN_ID", help="only this run")
    p.add_argument(
        "--file",
        metavar="FILE",
        help="mine the lines of FILE (or - for stdin) instead of the store; nothing is stored",
    )
    a = verb("analytics", "run and LLM figures for a window, with the previous window")
    a.add_argument("report", choices=("overview", "performance"), metavar="overview|performance")
    a.add_argument("--since", metavar="D", default="1h", help="window length (1h)")
    a.add_argument("--buckets", type=int, default=24, metavar="N", help="performance buckets")


# ---------------------------------------------------------------- patterns


def _mine_file(ctx: Ctx) -> int:
    from ..patterns import TemplateMiner

    path = ctx.args.file
    raw = sys.stdin.buffer.read() if path == "-" else _read(path)
    lines = [ln.strip() for ln in raw.decode("utf-8", "backslashreplace").splitlines()]
    miner = TemplateMiner()
    ids = miner.add_many(lines)
    final = [miner.resolve(i) for i in ids]
    if ctx.output == "jsonl":
        for n, cid in enumerate(final, 1):
            c = miner.get(cid)
            ctx.json({"line": n, "pattern": cid, "template": c.template if c else ""})
        return 0
    counts = Counter(final)
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if ctx.output == "json":
        ctx.json(
            {
                "lines": len(lines),
                "patterns": [
                    {"pattern": cid, "count": n, "template": _template(miner, cid)}
                    for cid, n in rows
                ],
            }
        )
        return 0
    ctx.print(f"{'COUNT':>7}  TEMPLATE")
    for cid, n in rows:
        ctx.print(f"{n:>7}  {out.escape_control(_template(miner, cid))}")
    ctx.note(f"{len(lines)} lines, {len(rows)} patterns")
    return 0


def _template(miner: Any, cid: int) -> str:
    c = miner.get(cid)
    return str(c.template) if c else ""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


async def cmd_patterns(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns
    from .main import _duration, _open_backend, _table_width

    if ctx.args.file:
        return _mine_file(ctx)
    window = _duration(ctx.args.since, "--since")
    end = now_ns()
    async with await _open_backend(ctx.settings) as backend:
        report = await backend.failure_patterns(
            end - window, end, agent=ctx.args.agent, run_id=ctx.args.run
        )
    if ctx.output == "json":
        ctx.json(report)
        return 0
    if ctx.output == "jsonl":
        for p in report.patterns:
            ctx.json(p)
        return 0
    width = _table_width(ctx.stdout)
    ctx.print(f"{'KIND':<5} {'NEW':<3} {'COUNT':>6} {'RUNS':>5} {'AGENTS':<12} TEMPLATE")
    for p in report.patterns:
        agents = ",".join(p.agents)
        cells = [
            out.fit(KIND_WORD.get(p.kind.value, p.kind.value), 5),
            "new" if p.new else "   ",
            f"{p.count:>6}",
            f"{p.run_count:>5}",
            out.fit(agents, 12),
            out.escape_control(out.fit(p.template, max(20, width - 37))).rstrip(),
        ]
        ctx.print(" ".join(cells))
    ctx.note(
        f"{len(report.patterns)} patterns, {report.error_lines} error lines in the last "
        f"{ctx.args.since}"
    )
    return 0


# ---------------------------------------------------------------- analytics


def _delta(cur: float, prev: float) -> str:
    if prev == 0:
        return "" if cur == 0 else "(new)"
    change = (cur - prev) / prev * 100
    return f"({change:+.0f}%)"


async def cmd_analytics(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns
    from .main import _duration, _open_backend

    window = _duration(ctx.args.since, "--since")
    end = now_ns()
    async with await _open_backend(ctx.settings) as backend:
        if ctx.args.report == "overview":
            ov = await backend.overview(end - window, end)
            if ctx.output in ("json", "jsonl"):
                ctx.json(ov)
                return 0
            _print_overview(ctx, ov)
            return 0
        perf = await backend.performance(end - window, end, buckets=max(1, ctx.args.buckets))
    if ctx.output in ("json", "jsonl"):
        ctx.json(perf)
        return 0
    _print_performance(ctx, perf)
    return 0


def _print_overview(ctx: Ctx, ov: Any) -> None:
    c, p = ov.current, ov.previous
    rate = "n/a" if c.success_rate is None else f"{c.success_rate:.1%}"
    prate = "n/a" if p.success_rate is None else f"{p.success_rate:.1%}"
    rows = [
        ("runs", str(c.runs), str(p.runs), _delta(c.runs, p.runs)),
        ("success rate", rate, prate, ""),
        ("active (running)", str(c.active), str(p.active), ""),
        ("stalled", str(c.stalled), str(p.stalled), ""),
        (
            "error lines",
            str(c.error_lines),
            str(p.error_lines),
            _delta(c.error_lines, p.error_lines),
        ),
        ("log lines", str(c.log_lines), str(p.log_lines), _delta(c.log_lines, p.log_lines)),
        ("log bytes", str(c.log_bytes), str(p.log_bytes), ""),
        ("input tokens", str(c.input_tokens), str(p.input_tokens), ""),
        ("output tokens", str(c.output_tokens), str(p.output_tokens), ""),
        (
            "cost",
            out.format_cost(c.cost_usd),
            out.format_cost(p.cost_usd),
            _delta(c.cost_usd, p.cost_usd),
        ),
    ]
    rows += [
        (f"  {status}", str(n), str(p.by_status.get(status, 0)), "")
        for status, n in c.by_status.items()
        if n or p.by_status.get(status, 0)
    ]
    ctx.print(f"{'':<18} {'THIS WINDOW':>14} {'PREVIOUS':>14}")
    for name, cur, prev, delta in rows:
        ctx.print(f"{name:<18} {cur:>14} {prev:>14} {delta}".rstrip())


def _pct_row(name: str, p: Any) -> str:
    return f"{out.fit(name, 30)} {p.count:>6} {p.p50:>9.1f} {p.p95:>9.1f} {p.p99:>9.1f}"


def _print_performance(ctx: Ctx, perf: Any) -> None:
    head = f"{'':<30} {'RUNS':>6} {'P50 s':>9} {'P95 s':>9} {'P99 s':>9}"
    ctx.print("run duration by agent")
    ctx.print(head)
    for name, p in perf.duration_by_agent.items():
        ctx.print(_pct_row(name or "(none)", p))
    ctx.print("")
    ctx.print("run duration by task (top 10 by runs)")
    ctx.print(head)
    top = sorted(perf.duration_by_task.items(), key=lambda kv: -kv[1].count)[:10]
    for name, p in top:
        ctx.print(_pct_row(out.escape_control(name) or "(none)", p))
    ctx.print("")
    ctx.print("LLM calls by model")
    ctx.print(f"{'':<30} {'CALLS':>6} {'IN TOK':>9} {'OUT TOK':>9} {'COST':>9} {'P95 ms':>8}")
    for m in perf.models:
        p95 = f"{m.latency_ms.p95:.0f}" if m.latency_ms else "-"
        ctx.print(
            f"{out.fit(out.escape_control(m.model), 30)} {m.calls:>6} {m.input_tokens:>9} "
            f"{m.output_tokens:>9} {out.format_cost(m.cost_usd):>9} {p95:>8}"
        )
    total = sum(v for _, v in perf.runs_per_hour) / max(1, len(perf.runs_per_hour))
    ctx.print("")
    ctx.print(f"runs per hour (mean over the window): {total:.1f}")
