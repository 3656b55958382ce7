"""Rendering for the CLI: text tables and lines for people, Loki-shaped JSON for scripts.

Text output treats log content as data: control characters (C0 except tab, DEL, C1, so ESC and
CSI too) are shown as visible `\\xNN` escapes, so a log line can never move the cursor, change
colours or retitle the terminal. JSON output is exact (JSON escaping already makes it inert).

Layout decisions (80 columns is the target, as on-call sessions over SSH often are):
- log lines: `TIMESTAMP  {labels}  line`. The timestamp is local-time RFC3339 with milliseconds.
  The labels column is as wide as the widest label set of the output, capped at `LABELS_MAX`
  cells; longer label sets are cut with `…`. The log line itself is never cut.
- when a result has several streams, labels they all share are printed once on stderr
  (`common labels: {...}`, as logcli does) and left out of every line.
- tasks: one row per run, 80 cells at most (or the terminal's width when stdout is a wider
  terminal); the task name takes what the fixed columns leave.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from ..logql.strings import quote
from ..models import (
    Direction,
    Labels,
    MatrixResult,
    QueryResult,
    QueryStats,
    RunStatus,
    ScalarResult,
    Stream,
    StreamsResult,
    Summary,
    Task,
    VectorResult,
)

WIDTH = 80
LABELS_MAX = 40
NS = 1_000_000_000

STATUS_GLYPHS: dict[RunStatus, str] = {
    RunStatus.FAILED: "✗",
    RunStatus.TIMEOUT: "⏱",
    RunStatus.STALLED: "⏸",
    RunStatus.RUNNING: "●",
    RunStatus.SUCCEEDED: "✓",
    RunStatus.CANCELLED: "⊘",
}

# C0 controls except tab, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_KEEP_NL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape_char(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


def escape_control(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control characters replaced by visible `\\xNN` escapes (tab is kept; newlines
    too when `keep_newlines`)."""
    pattern = _CONTROL_KEEP_NL if keep_newlines else _CONTROL
    return pattern.sub(_escape_char, text)


def char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Terminal cells `text` takes (wide East Asian characters count 2, combining marks 0)."""
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


def fit(text: str, width: int, *, align_right: bool = False) -> str:
    """`text` cut (with `…`) or padded to exactly `width` cells."""
    w = display_width(text)
    if w > width:
        out: list[str] = []
        used = 0
        for ch in text:
            cw = char_width(ch)
            if used + cw > width - 1:
                break
            out.append(ch)
            used += cw
        text = "".join(out) + "…"
        w = used + 1
    pad = " " * (width - w)
    return pad + text if align_right else text + pad


# ---------------------------------------------------------------- scalars


def format_labels(labels: Mapping[str, str]) -> str:
    """`{a="1",b="2"}`, keys sorted, values quoted (and escaped) as LogQL strings."""
    inner = ",".join(f"{k}={quote(labels[k])}" for k in sorted(labels))
    return escape_control("{" + inner + "}")


def format_ts(ns: int, *, ms: bool = True) -> str:
    """Local-time RFC3339, with milliseconds by default: `2026-08-01T14:02:03.123+02:00`."""
    sec, rem = divmod(ns, NS)
    dt = datetime.fromtimestamp(sec).astimezone()
    if ms:
        dt = dt.replace(microsecond=(rem // 1_000_000) * 1000)
        return dt.isoformat(timespec="milliseconds")
    return dt.isoformat(timespec="seconds")


def format_seconds_ts(seconds: float) -> str:
    """Metric sample time (Unix seconds, possibly fractional) as local RFC3339."""
    ns = round(seconds * 1000) * 1_000_000
    return format_ts(ns, ms=ns % NS != 0)


def format_value(value: float) -> str:
    """A sample value as Prometheus/Loki write it: `37`, `37.7`, `0.00001`, `NaN`, `+Inf`."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def format_duration_short(ns: int | None) -> str:
    """`850ms`, `45s`, `12m05s`, `3h07m`, `2d04h`; `-` when unknown."""
    if ns is None:
        return "-"
    if ns < NS:
        return f"{ns // 1_000_000}ms"
    s = ns // NS
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def format_ago(ns: int | None, now_ns: int) -> str:
    """How long ago: `just now`, `45s ago`, `5m ago`, `3h ago`, `2d ago`; `-` when unknown."""
    if ns is None:
        return "-"
    delta = now_ns - ns
    if delta < 0:
        return "in future"
    s = delta // NS
    if s < 1:
        return "just now"
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m ago"
    if s < 86400:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


def format_count(n: int) -> str:
    """`950`, `12.3k`, `123k`, `4.5M`."""
    if n < 1000:
        return str(n)
    for unit, div in (("k", 1_000), ("M", 1_000_000), ("G", 1_000_000_000)):
        v = n / div
        if v < 999.5:
            return f"{v:.1f}{unit}" if v < 9.95 else f"{v:.0f}{unit}"
    return f"{n / 1e12:.0f}T"


def format_cost(usd: float) -> str:
    """At most 5 cells: `-`, `<1¢`, `$0.42`, `$12.3`, `$456`, `$1.2k`."""
    if usd <= 0:
        return "-"
    if usd < 0.01:
        return "<1¢"
    if usd < 9.995:
        return f"${usd:.2f}"
    if usd < 99.95:
        return f"${usd:.1f}"
    if usd < 999.5:
        return f"${usd:.0f}"
    return "$" + format_count(round(usd))


def status_cell(status: RunStatus) -> str:
    return f"{STATUS_GLYPHS.get(status, '?')} {status.value}"


def short_id(run_id: str, n: int = 8) -> str:
    return run_id[:n]


def dumps(obj: Any) -> str:
    """Compact JSON (UTF-8 kept as is) for json/jsonl output."""
    return orjson.dumps(obj).decode()


# ---------------------------------------------------------------- query results


def stats_json(stats: QueryStats) -> dict[str, Any]:
    return {
        "summary": {
            "execTime": stats.exec_time,
            "totalLinesProcessed": stats.lines_processed,
            "totalBytesProcessed": stats.bytes_processed,
            "totalEntriesReturned": stats.entries_returned,
        }
    }


def _stream_values(stream: Stream) -> list[list[Any]]:
    return [[str(e.ts), e.line] for e in stream.entries]


def query_result_json(result: QueryResult) -> dict[str, Any]:
    """Loki's response body for the result: `{"status":"success","data":{...}}`."""
    data: dict[str, Any] = {"resultType": result.result_type}
    if isinstance(result, StreamsResult):
        data["result"] = [{"stream": s.labels, "values": _stream_values(s)} for s in result.streams]
    elif isinstance(result, MatrixResult):
        data["result"] = [
            {"metric": s.metric, "values": [[t, format_value(v)] for t, v in s.values]}
            for s in result.series
        ]
    elif isinstance(result, VectorResult):
        data["result"] = [
            {"metric": s.metric, "value": [s.ts, format_value(s.value)]} for s in result.samples
        ]
    else:
        data["result"] = [result.ts, format_value(result.value)]
    data["stats"] = stats_json(result.stats)
    return {"status": "success", "data": data}


def sorted_entries(
    result: StreamsResult, direction: Direction
) -> list[tuple[Labels, int, str, Labels]]:
    """All entries of a log result as (labels, ts, line, metadata), in query direction."""
    rows = [(s.labels, e.ts, e.line, e.metadata) for s in result.streams for e in s.entries]
    rows.sort(key=lambda r: r[1], reverse=direction == Direction.BACKWARD)
    return rows


def query_result_jsonl(result: QueryResult, direction: Direction) -> Iterator[dict[str, Any]]:
    """One object per log entry (`timestamp` ns as a string, `labels`, `line`, and `metadata` when
    there is some), or one per metric sample (`metric`, `time` in Unix seconds, `value`)."""
    if isinstance(result, StreamsResult):
        for labels, ts, line, meta in sorted_entries(result, direction):
            obj: dict[str, Any] = {"timestamp": str(ts), "labels": labels, "line": line}
            if meta:
                obj["metadata"] = meta
            yield obj
    elif isinstance(result, MatrixResult):
        for s in result.series:
            for t, v in s.values:
                yield {"metric": s.metric, "time": t, "value": format_value(v)}
    elif isinstance(result, VectorResult):
        for smp in result.samples:
            yield {"metric": smp.metric, "time": smp.ts, "value": format_value(smp.value)}
    else:
        yield {"time": result.ts, "value": format_value(result.value)}


def common_labels(label_sets: Sequence[Labels]) -> Labels:
    """Labels (name and value) shared by every set; empty for fewer than two sets."""
    if len(label_sets) < 2:
        return {}
    first, *rest = label_sets
    return {k: v for k, v in first.items() if all(ls.get(k) == v for ls in rest)}


class LogLineFormatter:
    """Formats `TIMESTAMP  {labels}  line` rows with a fixed labels column."""

    def __init__(self, label_width: int = LABELS_MAX, drop: Labels | None = None) -> None:
        self.label_width = max(2, min(label_width, LABELS_MAX))
        self.drop = drop or {}

    @classmethod
    def for_labels(
        cls, label_sets: Iterable[Labels], drop: Labels | None = None
    ) -> LogLineFormatter:
        drop = drop or {}
        widths = [
            display_width(format_labels({k: v for k, v in ls.items() if k not in drop}))
            for ls in label_sets
        ]
        return cls(max(widths, default=2), drop)

    def labels_text(self, labels: Labels) -> str:
        shown = {k: v for k, v in labels.items() if k not in self.drop} if self.drop else labels
        return format_labels(shown)

    def format(self, labels: Labels, ts: int, line: str) -> str:
        return f"{format_ts(ts)}  {fit(self.labels_text(labels), self.label_width)}  " + (
            escape_control(line)
        )


def render_streams_text(result: StreamsResult, direction: Direction) -> tuple[Labels, list[str]]:
    """(common labels to mention once, the lines) for a log-query result."""
    label_sets = [s.labels for s in result.streams if s.entries]
    common = common_labels(label_sets)
    fmt = LogLineFormatter.for_labels(label_sets, common)
    lines = [fmt.format(lb, ts, line) for lb, ts, line, _ in sorted_entries(result, direction)]
    return common, lines


def render_metric_text(result: MatrixResult | VectorResult | ScalarResult) -> list[str]:
    """A table: per series its labels, then `time  value` rows (matrix); or `labels  value` rows
    (vector); or the value (scalar)."""
    out: list[str] = []
    if isinstance(result, MatrixResult):
        series = sorted(result.series, key=lambda s: format_labels(s.metric))
        for i, s in enumerate(series):
            if i:
                out.append("")
            out.append(format_labels(s.metric))
            vals = [format_value(v) for _, v in s.values]
            vw = max((len(v) for v in vals), default=1)
            for (t, _), v in zip(s.values, vals, strict=True):
                out.append(f"  {format_seconds_ts(t)}  {v:>{vw}}")
        if not series:
            out.append("(no series)")
    elif isinstance(result, VectorResult):
        samples = sorted(result.samples, key=lambda s: format_labels(s.metric))
        names = [format_labels(s.metric) for s in samples]
        lw = min(max((display_width(n) for n in names), default=2), WIDTH - 20)
        for name, smp in zip(names, samples, strict=True):
            out.append(f"{fit(name, lw)}  {format_value(smp.value)}")
        if not samples:
            out.append("(no series)")
    else:
        out.append(format_value(result.value))
    return out


# ---------------------------------------------------------------- tasks


def task_dict(task: Task) -> dict[str, Any]:
    """A task as JSON: enums as their string values, timestamps as integer ns."""
    return {
        "run_id": task.run_id,
        "agent": task.agent,
        "task": task.task,
        "status": task.status.value,
        "started_at": task.started_at,
        "ended_at": task.ended_at,
        "last_seen": task.last_seen,
        "duration_ns": task.duration_ns,
        "step_count": task.step_count,
        "error_count": task.error_count,
        "last_error": task.last_error,
        "model": task.model,
        "input_tokens": task.input_tokens,
        "output_tokens": task.output_tokens,
        "cost_usd": task.cost_usd,
        "triage": task.triage.value,
        "triage_by": task.triage_by,
        "triage_note": task.triage_note,
        "triage_at": task.triage_at,
        "tenant": task.tenant,
    }


def summary_dict(summary: Summary) -> dict[str, Any]:
    return dataclasses.asdict(summary)


# (header, width, right-aligned); the task column (width 0) takes the rest of WIDTH.
TASK_COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("STATUS", 11, False),
    ("RUN", 8, False),
    ("AGENT", 10, False),
    ("TASK", 0, False),
    ("STARTED", 7, True),
    ("DUR", 6, True),
    ("ERR", 3, True),
    ("TOK", 5, True),
    ("COST", 5, True),
    ("TRIAGE", 8, False),
)


def _task_widths(width: int) -> list[int]:
    fixed = sum(w for _, w, _ in TASK_COLUMNS)
    gaps = len(TASK_COLUMNS) - 1
    flex = max(6, width - fixed - gaps)
    return [w or flex for _, w, _ in TASK_COLUMNS]


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = [
        fit(cell, w, align_right=right)
        for cell, w, (_, _, right) in zip(cells, widths, TASK_COLUMNS, strict=True)
    ]
    return " ".join(parts).rstrip()


def render_task_table(tasks: Sequence[Task], now_ns: int, width: int = WIDTH) -> list[str]:
    """Header and one aligned row per task, `width` cells wide at most."""
    widths = _task_widths(width)
    out = [_row([h for h, _, _ in TASK_COLUMNS], widths)]
    for t in tasks:
        cells = [
            status_cell(t.status),
            short_id(escape_control(t.run_id)),
            escape_control(t.agent) or "-",
            escape_control(t.task) or "-",
            format_ago(t.started_at if t.started_at is not None else t.last_seen, now_ns),
            format_duration_short(t.duration_ns),
            str(t.error_count),
            format_count(t.input_tokens + t.output_tokens),
            format_cost(t.cost_usd),
            t.triage.value,
        ]
        out.append(_row(cells, widths))
    return out


def render_task_facts(task: Task, now_ns: int) -> list[str]:
    """`key: value` lines for one run."""

    def when(ns: int | None) -> str:
        return "-" if ns is None else f"{format_ts(ns)} ({format_ago(ns, now_ns)})"

    facts: list[tuple[str, str]] = [
        ("run_id", task.run_id),
        ("status", status_cell(task.status)),
        ("agent", task.agent or "-"),
        ("task", task.task or "-"),
        ("started", when(task.started_at)),
        ("ended", when(task.ended_at)),
        ("last seen", when(task.last_seen)),
        ("duration", format_duration_short(task.duration_ns)),
        ("steps", str(task.step_count)),
        ("errors", str(task.error_count)),
        ("last error", task.last_error or "-"),
        ("model", task.model or "-"),
        ("tokens", f"{task.input_tokens} in / {task.output_tokens} out"),
        ("cost", f"${task.cost_usd:.4f}"),
        ("triage", task.triage.value),
    ]
    if task.triage_by:
        facts.append(("triage by", task.triage_by))
    if task.triage_at is not None:
        facts.append(("triage at", when(task.triage_at)))
    if task.triage_note:
        facts.append(("triage note", task.triage_note))
    kw = max(len(k) for k, _ in facts)
    return [f"{k + ':':<{kw + 1}} {escape_control(v)}" for k, v in facts]
