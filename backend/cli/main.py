"""`agentlog`: the command line. Every backend capability as a verb that prints text or JSON, in
the manner of Loki's logcli, so anything the TUI shows can be piped and tested.

    agentlog [global options] VERB [options]      (global options may also follow the verb)

Global options: `--config PATH`, `--data-dir PATH`, `-o/--output text|json|jsonl`, `--demo`,
`--version`. With no verb, the TUI opens (when it is installed; until then, the help is printed).

Exit codes:
    0    success (also: Ctrl-C on `tail` and `demo`, whose normal way to stop it is)
    1    runtime error: the store failed, a service is down, or the thing asked for does not
         exist (`NotFound`, e.g. an unknown run id: the request was well formed, the data is not
         there)
    2    usage error: bad arguments, bad config, bad LogQL or query parameters
    130  interrupted (Ctrl-C) elsewhere

Errors print one line, `agentlog: error: <message>`, on stderr; never a traceback (set
`AGENTLOG_DEBUG=1` to get one for an unexpected internal error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

import orjson

from .. import __version__
from ..errors import AgentlogError, UsageError
from ..models import (
    Direction,
    Labels,
    MatrixResult,
    PushResult,
    RunStatus,
    ScalarResult,
    Stream,
    StreamsResult,
    TailBatch,
    TaskFilter,
    TaskSort,
    TriageState,
    VectorResult,
)
from . import admin, insights
from . import output as out
from .progress import Progress

if TYPE_CHECKING:  # imported lazily at run time: `--version` and `--help` stay fast
    from ..config import Settings
    from ..facade import Backend

NS = 1_000_000_000
DEFAULT_TAIL_QUERY = '{service_name=~".+"}'
OUTPUTS = ("text", "json", "jsonl")

TRIAGE_WORDS: dict[str, TriageState] = {
    "ack": TriageState.ACKED,
    "acked": TriageState.ACKED,
    "resolve": TriageState.RESOLVED,
    "resolved": TriageState.RESOLVED,
    "ignore": TriageState.IGNORED,
    "ignored": TriageState.IGNORED,
    "new": TriageState.NEW,
    "reopen": TriageState.NEW,
}


# ---------------------------------------------------------------- argument parsing


class _ArgError(Exception):
    """argparse found a usage error (mapped to exit 2 with a one-line message)."""


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so `main()` returns an exit code."""

    def error(self, message: str) -> NoReturn:
        raise _ArgError(f"{message} (see '{self.prog} --help')")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _Exit(status)


def _add_globals(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options. On sub-parsers their default is SUPPRESS, so a value given before the
    verb is kept unless the same option is repeated after it."""

    def kw(default: Any) -> Any:
        return default if top else argparse.SUPPRESS

    g = p.add_argument_group("global options")
    g.add_argument("--config", metavar="PATH", default=kw(None), help="YAML config file")
    g.add_argument(
        "--data-dir", metavar="PATH", default=kw(None), help="data directory (embedded store)"
    )
    g.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=kw("text"),
        help="output format (default: text)",
    )
    g.add_argument(
        "--demo",
        action="store_true",
        default=kw(False),
        help="with no verb: run the demo fleet beside the TUI",
    )


def _since_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--since", metavar="D", default=None, help=f"look back this far (default {default})"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agentlog",
        description="Watch fleets of AI agents: runs, logs, failures and summaries.",
        epilog="Run 'agentlog VERB --help' for a verb's options. With no verb, opens the TUI.",
    )
    parser.add_argument("--version", action="version", version=f"agentlog {__version__}")
    _add_globals(parser, top=True)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help_text, description=help_text)
        _add_globals(p, top=False)
        return p

    q = verb("query", "run a LogQL query (log lines, or a metric table)")
    q.add_argument("query", metavar="LOGQL")
    _since_arg(q, "1h")
    q.add_argument("--from", dest="from_", metavar="T", help="start (RFC3339, Unix s or ns)")
    q.add_argument("--to", metavar="T", help="end (default now)")
    q.add_argument("--limit", type=int, default=100, metavar="N", help="max entries (100)")
    q.add_argument(
        "--direction",
        type=str.lower,
        choices=("backward", "forward"),
        default="backward",
        help="newest first (backward, default) or oldest first",
    )
    q.add_argument("--step", metavar="D", help="metric query resolution (default: auto)")
    q.add_argument("--instant", action="store_true", help="evaluate a metric query at --to")

    t = verb("tail", "follow log lines live (Ctrl-C stops)")
    t.add_argument("query", metavar="LOGQL", nargs="?", default=DEFAULT_TAIL_QUERY)
    _since_arg(t, "1h")
    t.add_argument("--limit", type=int, default=100, metavar="N", help="lines of backfill (100)")

    lb = verb("labels", "label names, or the values of one label")
    lb.add_argument("name", metavar="NAME", nargs="?")
    _since_arg(lb, "1h")
    lb.add_argument("--query", metavar="SELECTOR", help="only streams matching this selector")

    se = verb("series", "label sets of the streams matching selectors")
    se.add_argument("selectors", metavar="SELECTOR", nargs="*")
    _since_arg(se, "1h")

    ts = verb("tasks", "list runs (failing first)")
    ts.add_argument("--status", metavar="S,...", help="failed,timeout,stalled,running,...")
    ts.add_argument("--agent", metavar="A,...")
    ts.add_argument("--triage", metavar="T,...", help="new,acked,resolved,ignored")
    _since_arg(ts, "all")
    ts.add_argument("--search", metavar="TEXT", help="in task name, run id or last error")
    ts.add_argument("--sort", choices=[s.value for s in TaskSort], default="failing")
    ts.add_argument("--limit", type=int, default=50, metavar="N")
    ts.add_argument("--cursor", metavar="C", help="the next cursor a previous page printed")

    tk = verb("task", "one run's facts")
    tk.add_argument("run_id", metavar="RUN_ID")

    sm = verb("summarize", "summarize a run (streams as it is written)")
    sm.add_argument("run_id", metavar="RUN_ID")
    sm.add_argument("--refresh", action="store_true", help="ignore a stored summary")
    sm.add_argument("--model", metavar="M", help="OpenRouter model (default summarizer.model)")

    tr = verb("triage", "mark a run: ack, resolve, ignore or new")
    tr.add_argument("run_id", metavar="RUN_ID")
    tr.add_argument("state", metavar="STATE", type=str.lower, choices=sorted(TRIAGE_WORDS))
    tr.add_argument("--note", default="", metavar="N")
    tr.add_argument("--by", default=None, metavar="USER", help="default: tui.user ($USER)")

    ig = verb("ingest", "push a log file (JSON lines, logfmt or text) into the store")
    ig.add_argument("file", metavar="FILE", help="a file, or - for stdin")
    ig.add_argument("--labels", metavar="k=v,...", default="", help="labels of every line")
    ig.add_argument("--batch", type=int, default=1000, metavar="N", help="lines per push (1000)")

    dm = verb("demo", "run the simulated agent fleet into the store")
    dm.add_argument("--agents", type=int, metavar="N", help="default demo.agents (8)")
    dm.add_argument("--runs", type=int, metavar="N", help="stop after this many runs")
    dm.add_argument("--rate", type=float, metavar="R", help="runs/min/agent (demo.rate)")
    dm.add_argument("--duration", metavar="D", help="live for this long (default: until Ctrl-C)")
    dm.add_argument("--backfill", metavar="D", help="write this much history first, e.g. 24h")
    dm.add_argument("--seed", type=int, metavar="S", help="random seed (demo.seed)")
    dm.add_argument("--speed", type=float, default=1.0, metavar="X", help="live time compression")

    insights.add_parsers(verb)
    admin.add_parsers(verb)

    cf = verb("config", "configuration")
    cf_verbs = cf.add_subparsers(dest="config_verb", metavar="ACTION", parser_class=_Parser)
    ck = cf_verbs.add_parser(
        "check", help="validate and print the effective config (secrets masked)"
    )
    _add_globals(ck, top=False)
    return parser


# ---------------------------------------------------------------- plumbing


@dataclass(slots=True)
class Ctx:
    """What every verb gets: parsed args, settings, output streams and format."""

    args: argparse.Namespace
    settings: Settings
    stdout: TextIO
    stderr: TextIO

    @property
    def output(self) -> str:
        return str(getattr(self.args, "output", "text"))

    def print(self, text: str = "") -> None:
        self.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        """A message for the person at the terminal (stderr, never mixed into data)."""
        self.stdout.flush()  # keep the order both streams were written in on a terminal
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def json(self, obj: Any) -> None:
        self.stdout.write(out.dumps(obj) + "\n")


def _one_line(message: str) -> str:
    """A message as one line of inert text (it may quote run ids or queries from users)."""
    parts = [p.strip() for p in message.splitlines() if p.strip()]
    return out.escape_control("; ".join(parts)) or "unknown error"


def _error(message: str) -> None:
    sys.stderr.write(f"agentlog: error: {_one_line(message)}\n")
    sys.stderr.flush()


def _load_settings(args: argparse.Namespace) -> Settings:
    from ..config import load_config

    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return load_config(getattr(args, "config", None), overrides=overrides).settings


def _duration(value: str, what: str) -> int:
    from ..logql.timefmt import parse_duration

    try:
        ns = parse_duration(value)
    except AgentlogError as exc:
        raise UsageError(f"{what}: {exc}") from None
    return ns


def _since_ns(ctx: Ctx, default_ns: int) -> int:
    since = getattr(ctx.args, "since", None)
    return default_ns if since is None else _duration(since, "--since")


def _run_async(coro_fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    return asyncio.run(coro_fn())


async def _open_backend(settings: Settings) -> Backend:
    from ..facade import Backend

    return await Backend.open(settings)


def _split_csv(value: str | None) -> list[str]:
    if not value:
        return []
    return [p.strip() for p in value.split(",") if p.strip()]


def _enum_list(
    value: str | None, enum: Any, what: str, aliases: dict[str, Any] | None = None
) -> Any:
    items = []
    allowed = [e.value for e in enum]
    for word in _split_csv(value):
        w = word.lower()
        if aliases and w in aliases:
            items.append(aliases[w])
            continue
        try:
            items.append(enum(w))
        except ValueError:
            raise UsageError(
                f"{what}: unknown value {word!r}; expected one or more of {', '.join(allowed)}"
            ) from None
    return tuple(items)


def _parse_labels(text: str) -> Labels:
    from ..ingest import label_name

    labels: Labels = {}
    for part in _split_csv(text):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--labels: expected k=v pairs separated by commas, got {part!r}")
        if label_name(name) != name:
            raise UsageError(
                f"--labels: invalid label name {name!r}: use letters, digits and underscores, "
                "not starting with a digit"
            )
        labels[name] = value.strip().strip('"')
    return labels


# ---------------------------------------------------------------- verbs: logs


async def cmd_query(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns, parse_step, parse_time

    a = ctx.args
    if a.limit <= 0:
        raise UsageError("--limit must be a positive number")
    now = now_ns()
    end = parse_time(a.to, now)
    start = parse_time(a.from_, min(end, now) - _since_ns(ctx, 3600 * NS))
    direction = Direction(a.direction)
    async with await _open_backend(ctx.settings) as backend:
        if a.instant:
            result = await backend.query_instant(a.query, end, limit=a.limit)
        else:
            step = parse_step(a.step, start, end) if a.step else None
            result = await backend.query(
                a.query, start, end, limit=a.limit, direction=direction, step_ns=step
            )
    if ctx.output == "json":
        ctx.json(out.query_result_json(result))
    elif ctx.output == "jsonl":
        for obj in out.query_result_jsonl(result, direction):
            ctx.json(obj)
    elif isinstance(result, StreamsResult):
        common, lines = out.render_streams_text(result, direction)
        if common:
            ctx.note(f"common labels: {out.format_labels(common)}")
        for line in lines:
            ctx.print(line)
        if not lines:
            ctx.note("no log lines in the time range (try --since or --from)")
    else:
        assert isinstance(result, MatrixResult | VectorResult | ScalarResult)
        for line in out.render_metric_text(result):
            ctx.print(line)
    return 0


def _tail_frame(batch: TailBatch) -> dict[str, Any]:
    """Loki's tail frame shape (`streams`, grouped by label set). Entries this tail skipped
    because it fell behind are reported as `dropped` (a count) with the `dropped_from` and
    `dropped_to` ns bounds, not as Loki's per-entry `dropped_entries` list, which the store does
    not keep."""
    groups: dict[str, dict[str, Any]] = {}
    for te in batch.entries:
        key = out.format_labels(te.labels)
        g = groups.setdefault(key, {"stream": te.labels, "values": []})
        g["values"].append([str(te.entry.ts), te.entry.line])
    frame: dict[str, Any] = {"streams": list(groups.values())}
    if batch.dropped:
        frame["dropped"] = batch.dropped
        frame["dropped_from"] = None if batch.dropped_from is None else str(batch.dropped_from)
        frame["dropped_to"] = None if batch.dropped_to is None else str(batch.dropped_to)
    return frame


async def cmd_tail(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns

    a = ctx.args
    if a.limit <= 0:
        raise UsageError("--limit must be a positive number")
    start = now_ns() - _since_ns(ctx, 3600 * NS)
    fmt = out.LogLineFormatter(label_width=out.LABELS_MAX)
    widest = 2
    try:
        async with await _open_backend(ctx.settings) as backend:
            async for batch in backend.tail(a.query, start, limit=a.limit):
                if batch.dropped:
                    span = ""
                    if batch.dropped_from is not None and batch.dropped_to is not None:
                        span = (
                            f" between {out.format_ts(batch.dropped_from)}"
                            f" and {out.format_ts(batch.dropped_to)}"
                        )
                    ctx.note(
                        f"agentlog: {batch.dropped} entries dropped{span}: the tail fell "
                        "behind (they are still in the store; query that range to read them)"
                    )
                if ctx.output == "json":
                    ctx.json(_tail_frame(batch))
                else:
                    for te in batch.entries:
                        if ctx.output == "jsonl":
                            obj: dict[str, Any] = {
                                "timestamp": str(te.entry.ts),
                                "labels": te.labels,
                                "line": te.entry.line,
                            }
                            if te.entry.metadata:
                                obj["metadata"] = te.entry.metadata
                            ctx.json(obj)
                        else:
                            # the label column grows to the widest set seen (up to the cap)
                            w = out.display_width(fmt.labels_text(te.labels))
                            if w > widest:
                                widest = min(w, out.LABELS_MAX)
                                fmt = out.LogLineFormatter(label_width=widest)
                            ctx.print(fmt.format(te.labels, te.entry.ts, te.entry.line))
                ctx.stdout.flush()
    except asyncio.CancelledError:  # Ctrl-C: the normal way to stop a tail
        _uncancel()
    return 0


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def cmd_labels(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns

    a = ctx.args
    end = now_ns()
    start = end - _since_ns(ctx, 3600 * NS)
    async with await _open_backend(ctx.settings) as backend:
        if a.name:
            values = await backend.label_values(a.name, start, end, a.query)
        else:
            values = await backend.labels(start, end, a.query)
    if ctx.output == "json":
        body: dict[str, Any] = {"status": "success"}
        if values:  # Loki leaves `data` out when there is nothing
            body["data"] = values
        ctx.json(body)
    elif ctx.output == "jsonl":
        for v in values:
            ctx.json(v)
    else:
        for v in values:
            ctx.print(out.escape_control(v))
    return 0


async def cmd_series(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns

    end = now_ns()
    start = end - _since_ns(ctx, 3600 * NS)
    async with await _open_backend(ctx.settings) as backend:
        found = await backend.series(ctx.args.selectors, start, end)
    found.sort(key=out.format_labels)
    if ctx.output == "json":
        ctx.json({"status": "success", "data": found})
    elif ctx.output == "jsonl":
        for labels in found:
            ctx.json(labels)
    else:
        for labels in found:
            ctx.print(out.format_labels(labels))
    return 0


# ---------------------------------------------------------------- verbs: tasks


async def cmd_tasks(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns

    a = ctx.args
    if a.limit <= 0:
        raise UsageError("--limit must be a positive number")
    now = now_ns()
    flt = TaskFilter(
        statuses=_enum_list(a.status, RunStatus, "--status"),
        agents=tuple(_split_csv(a.agent)),
        triage=_enum_list(a.triage, TriageState, "--triage", TRIAGE_WORDS),
        since_ns=None if a.since is None else now - _duration(a.since, "--since"),
        text=a.search or "",
    )
    async with await _open_backend(ctx.settings) as backend:
        page = await backend.list_tasks(flt, sort=TaskSort(a.sort), limit=a.limit, cursor=a.cursor)
    if ctx.output == "json":
        ctx.json({"tasks": [out.task_dict(t) for t in page.tasks], "next_cursor": page.next_cursor})
    elif ctx.output == "jsonl":
        for t in page.tasks:
            ctx.json(out.task_dict(t))
        if page.next_cursor:
            ctx.note(f"next cursor: {page.next_cursor}")
    else:
        if not page.tasks:
            ctx.note("no runs match")
        else:
            for line in out.render_task_table(page.tasks, now, _table_width(ctx.stdout)):
                ctx.print(line)
        if page.next_cursor:
            ctx.print(f"next cursor: {page.next_cursor}")
    return 0


def _table_width(stream: TextIO) -> int:
    """80 columns, or the terminal's width when stdout is a wider terminal."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return out.WIDTH
    return max(out.WIDTH, shutil.get_terminal_size((out.WIDTH, 24)).columns)


async def cmd_task(ctx: Ctx) -> int:
    from ..logql.timefmt import now_ns

    async with await _open_backend(ctx.settings) as backend:
        task = await backend.get_task(ctx.args.run_id)
    if ctx.output in ("json", "jsonl"):
        ctx.json(out.task_dict(task))
    else:
        for line in out.render_task_facts(task, now_ns()):
            ctx.print(line)
    return 0


async def cmd_summarize(ctx: Ctx) -> int:
    a = ctx.args
    text_parts: list[str] = []
    async with await _open_backend(ctx.settings) as backend:
        async for chunk in backend.summarize(a.run_id, refresh=a.refresh, model=a.model):
            if chunk.text:
                text_parts.append(chunk.text)
                if ctx.output == "text":
                    ctx.stdout.write(out.escape_control(chunk.text, keep_newlines=True))
                    ctx.stdout.flush()
                elif ctx.output == "jsonl":
                    ctx.json({"text": chunk.text})
                    ctx.stdout.flush()
            if chunk.summary is not None:
                s = chunk.summary
                if ctx.output == "json":
                    ctx.json(out.summary_dict(s))
                elif ctx.output == "jsonl":
                    ctx.json({"summary": out.summary_dict(s)})
                else:
                    if not "".join(text_parts).endswith("\n"):
                        ctx.print()
                    kind = "offline extractive summary" if s.offline else f"model {s.model}"
                    note = f"({kind}"
                    if s.cost_usd:
                        note += f", ${s.cost_usd:.4f}"
                    if s.error:
                        note += f"; {s.error}"
                    ctx.note(note + ")")
    return 0


async def cmd_triage(ctx: Ctx) -> int:
    a = ctx.args
    state = TRIAGE_WORDS[a.state]
    by = a.by or ctx.settings.tui.user or "cli"
    async with await _open_backend(ctx.settings) as backend:
        task = await backend.set_triage(a.run_id, state, by=by, note=a.note)
    if ctx.output in ("json", "jsonl"):
        ctx.json(out.task_dict(task))
    else:
        ctx.print(
            out.escape_control(f"{task.run_id}: triage {task.triage.value} by {task.triage_by}")
        )
    return 0


# ---------------------------------------------------------------- verbs: ingest and demo


def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


async def cmd_ingest(ctx: Ctx) -> int:
    from ..ingest import MAX_READ_LINE, IngestStats, lines_to_streams, read_lines

    a = ctx.args
    if a.batch <= 0:
        raise UsageError("--batch must be a positive number")
    base = _parse_labels(a.labels)
    stats = IngestStats()
    pushed = PushResult()
    rejected = 0
    t0 = time.perf_counter()
    src = _open_input(a.file)
    try:
        async with await _open_backend(ctx.settings) as backend:
            batches = lines_to_streams(
                read_lines(src, stats=stats), base, backend.fields, batch_size=a.batch, stats=stats
            )
            with Progress("ingest", stream=ctx.stderr) as bar:
                while True:
                    # parsing (and reading) runs on a thread while the previous batch is stored
                    batch = await asyncio.to_thread(next, batches, None)
                    if batch is None:
                        break
                    res = await backend.push(batch)
                    pushed.accepted += res.accepted
                    pushed.duplicates += res.duplicates
                    pushed.truncated += res.truncated
                    rejected += len(res.rejected)
                    if res.rejected and not pushed.rejected:
                        pushed.rejected.append(res.rejected[0])  # the first, to show
                    bar.update(stats.lines)
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    seconds = time.perf_counter() - t0
    if pushed.duplicates:
        ctx.note(f"{pushed.duplicates} lines were already stored (exact duplicates, skipped)")
    if pushed.truncated:
        ctx.note(f"{pushed.truncated} lines were longer than the store keeps and were truncated")
    if stats.oversized:
        mib = MAX_READ_LINE // (1024 * 1024)
        ctx.note(f"{stats.oversized} lines over {mib} MiB were cut while reading")
    if rejected:
        first = pushed.rejected[0]
        ctx.note(
            f"{rejected} lines rejected (first: ts {first.ts}: {out.escape_control(first.reason)})"
        )
    if ctx.output in ("json", "jsonl"):
        ctx.json(
            {
                "lines": stats.lines,
                "accepted": pushed.accepted,
                "duplicates": pushed.duplicates,
                "truncated": pushed.truncated,
                "rejected": rejected,
                "skipped_empty": stats.skipped,
                "runs": len(stats.run_ids),
                "seconds": round(seconds, 3),
            }
        )
    ctx.note(f"ingested {stats.lines} lines ({len(stats.run_ids)} runs) in {seconds:.2f} s")
    return 0


@dataclass(slots=True)
class _DemoCounts:
    """Counted from what was pushed, for the final line when Ctrl-C cuts the fleet short."""

    lines: int = 0
    runs: int = 0
    failed: int = 0

    def add(self, streams: Sequence[Stream]) -> None:
        for s in streams:
            for e in s.entries:
                self.lines += 1
                line = e.line
                if '"run.start"' in line:
                    self.runs += 1
                elif '"run.end"' in line:
                    with contextlib.suppress(orjson.JSONDecodeError):
                        obj = orjson.loads(line)
                        if isinstance(obj, dict) and obj.get("status") in ("failed", "timeout"):
                            self.failed += 1


async def cmd_demo(ctx: Ctx) -> int:
    from ..demo.fleet import FleetOptions, FleetReport, run_fleet

    a = ctx.args
    d = ctx.settings.demo
    opts = FleetOptions(
        agents=a.agents if a.agents is not None else d.agents,
        runs=a.runs,
        rate=a.rate if a.rate is not None else d.rate,
        duration_s=None if a.duration is None else _duration(a.duration, "--duration") / NS,
        backfill_s=None if a.backfill is None else _duration(a.backfill, "--backfill") / NS,
        seed=a.seed if a.seed is not None else d.seed,
        speed=a.speed,
    )
    counts = _DemoCounts()
    t0 = time.perf_counter()
    report: FleetReport | None = None
    interrupted = False
    bar = Progress("demo", stream=ctx.stderr, unit="runs")
    async with await _open_backend(ctx.settings) as backend:

        async def push(streams: list[Stream]) -> PushResult:
            res = await backend.push(streams)
            counts.add(streams)
            return res

        try:
            report = await run_fleet(push, opts, progress=bar.update)
        except asyncio.CancelledError:
            interrupted = True
            _uncancel()
        finally:
            bar.close()
    if report is None:
        report = FleetReport(
            lines=counts.lines,
            runs=counts.runs,
            failed=counts.failed,
            seconds=time.perf_counter() - t0,
            streams=0,
        )
    if ctx.output in ("json", "jsonl"):
        ctx.json(
            {
                "lines": report.lines,
                "runs": report.runs,
                "failed": report.failed,
                "seconds": round(time.perf_counter() - t0, 3),
                "streams": report.streams,
                "interrupted": interrupted,
            }
        )
    seconds = time.perf_counter() - t0
    ctx.note(
        f"demo: wrote {report.lines} lines, {report.runs} runs ({report.failed} failed) "
        f"in {seconds:.2f} s"
    )
    return 0


# ---------------------------------------------------------------- verbs: config and the TUI


def cmd_config(ctx: Ctx, parser: argparse.ArgumentParser) -> int:
    from ..config import config_as_dict, load_config, render_config

    if ctx.args.config_verb != "check":
        parser.parse_args(["config", "--help"])
        return 2
    overrides: dict[str, object] = {}
    if getattr(ctx.args, "data_dir", None):
        overrides["data_dir"] = ctx.args.data_dir
    loaded = load_config(getattr(ctx.args, "config", None), overrides=overrides)
    if ctx.output in ("json", "jsonl"):
        ctx.json(config_as_dict(loaded, mask=True))
    else:
        ctx.stdout.write(render_config(loaded))
        where = loaded.path if loaded.path is not None else "none (defaults and environment)"
        ctx.note(f"config file: {where}")
    return 0


def _load_tui() -> Any:
    """The TUI module (`tui.app`), or None while it is not installed.

    The CLI is the program's one entry point, so it may start the TUI; it does so by name at run
    time, so the backend package never imports tui/ (DESIGN.md; tests/test_layering.py)."""
    if importlib.util.find_spec("tui") is None or importlib.util.find_spec("tui.app") is None:
        return None
    return importlib.import_module("tui.app")


def _run_tui(ctx: Ctx, parser: argparse.ArgumentParser) -> int:
    app = _load_tui()
    if app is None:
        parser.print_help(ctx.stdout)
        return 0
    code = app.run(ctx.settings, demo=bool(getattr(ctx.args, "demo", False)))
    return int(code or 0)


ASYNC_VERBS: dict[str, Callable[[Ctx], Coroutine[Any, Any, int]]] = {
    "query": cmd_query,
    "tail": cmd_tail,
    "labels": cmd_labels,
    "series": cmd_series,
    "tasks": cmd_tasks,
    "task": cmd_task,
    "summarize": cmd_summarize,
    "triage": cmd_triage,
    "ingest": cmd_ingest,
    "demo": cmd_demo,
    "patterns": insights.cmd_patterns,
    "analytics": insights.cmd_analytics,
    "serve": admin.cmd_serve,
    "token": admin.cmd_token,
    "apikey": admin.cmd_apikey,
}
CTRL_C_IS_NORMAL = frozenset({"tail", "demo"})


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    verb = args.verb
    if verb == "config":
        ctx = Ctx(args, None, sys.stdout, sys.stderr)  # type: ignore[arg-type]
        return cmd_config(ctx, parser)
    settings = _load_settings(args)
    ctx = Ctx(args, settings, sys.stdout, sys.stderr)
    if verb is None:
        return _run_tui(ctx, parser)
    fn = ASYNC_VERBS[verb]
    if verb not in CTRL_C_IS_NORMAL:
        return _run_async(lambda: fn(ctx))
    # `kill` / `timeout` stop a demo or tail the way Ctrl-C does: cleanly, with the final line.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _run_async(lambda: fn(ctx))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prefer_replacement(stream: TextIO) -> None:
    """Never die on an unencodable character (a C-locale terminal): escape it instead."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(Exception):
            reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    verb: str | None = None
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        verb = args.verb
        _prefer_replacement(sys.stdout)
        _prefer_replacement(sys.stderr)
        return _dispatch(args, parser)
    except _Exit as exc:
        return exc.code
    except _ArgError as exc:
        _error(str(exc))
        return 2
    except UsageError as exc:  # ConfigError, QueryError, LogQL errors, bad arguments
        _error(str(exc))
        return 2
    except AgentlogError as exc:  # StorageError, ServiceUnavailable, NotFound, ...
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        if verb in CTRL_C_IS_NORMAL:
            return 0
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`agentlog query ... | head`): not an error worth a message
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug: say so in one line, keep the traceback behind a switch
        if os.environ.get("AGENTLOG_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (AGENTLOG_DEBUG=1 shows more)")
        return 1
