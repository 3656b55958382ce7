"""The offline summarizer: facts and extracts from a run's log lines, no model, no network.

It is the fallback when there is no API key or the service fails, so it must work on anything:
lines are mostly JSON (the data contract in DESIGN.md), logfmt and plain text are tolerated, and
garbage is skipped. The output is plain text (never markup), deterministic, at most
`max_lines` lines (40 by default), and its first line says it is an offline extractive summary.

What it keeps, in order: run facts; the first and last steps; every distinct error with its
count and first occurrence (messages grouped after masking numbers, hex and UUIDs, so "timed out
after 30s" and "after 31s" count together); tool calls repeated with identical arguments (a
loop); the final status.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ..models import TERMINAL_STATUSES, RunStatus, Task

__all__ = ["ExtractiveSummarizer", "mask_message"]

_STEP_EVENTS = frozenset({"step", "tool.call", "llm.call"})
_KNOWN_EVENTS = _STEP_EVENTS | {"run.start", "run.end"}
_ERROR_LEVELS = frozenset({"error", "err", "fatal", "critical", "crit", "panic", "alert", "emerg"})

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(
    r"(?<![0-9A-Za-z])(?:0x[0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{6,})(?![0-9A-Za-z])"
)
_NUM = re.compile(r"\d+(?:\.\d+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_LOGFMT_START = re.compile(r"^[A-Za-z_][\w.\-]*=")
_LOGFMT_PAIR = re.compile(r'([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|\S*)')
_PLAIN_ERROR = re.compile(r"\b(?:ERROR|FATAL|CRITICAL|PANIC)\b|^\s*\w*(?:Error|Exception)\b:")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)")


def mask_message(message: str) -> str:
    """The grouping key of an error message: UUIDs, hex ids and numbers become `<*>`."""
    message = _UUID.sub("<*>", message)
    message = _HEX.sub("<*>", message)
    return _NUM.sub("<*>", message)


def _clean(text: object, width: int = 160) -> str:
    """One line of plain text: control characters (escape sequences, newlines) become spaces."""
    s = _CONTROL.sub(" ", text if isinstance(text, str) else str(text)).strip()
    return s if len(s) <= width else s[: width - 3] + "..."


def _parse(line: str) -> tuple[str, dict[str, Any]]:
    """(format, fields) of one raw line; format is json, logfmt or plain."""
    s = line.strip()
    if s.startswith("{"):
        try:
            obj = orjson.loads(s)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return "json", obj
    if _LOGFMT_START.match(s):
        fields: dict[str, Any] = {}
        for key, raw in _LOGFMT_PAIR.findall(s):
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            fields[key] = raw
        if len(fields) >= 2:
            return "logfmt", fields
    return "plain", {}


def _get(d: dict[str, Any], *names: str) -> Any:
    """The first present field among `names`; dotted names also match nested objects."""
    for name in names:
        if name in d:
            return d[name]
        head, _, rest = name.partition(".")
        if rest and isinstance(d.get(head), dict) and rest in d[head]:
            return d[head][rest]
    return None


def _str(v: Any) -> str:
    return "" if v is None else v if isinstance(v, str) else str(v)


def _int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return 0


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _hms(ts: Any) -> str:
    """HH:MM:SS of an ISO timestamp field, or '' (no clock reading: deterministic)."""
    m = _ISO_TIME.match(ts) if isinstance(ts, str) else None
    return m.group(1) if m else ""


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _span_ms(first: str, last: str) -> float | None:
    """Milliseconds between two ISO timestamps from the lines, when both parse."""
    try:
        a = datetime.fromisoformat(first)
        b = datetime.fromisoformat(last)
        return max(0.0, (b - a).total_seconds() * 1000)
    except (ValueError, TypeError):
        return None


def _args_key(args: Any) -> str:
    if args is None:
        return ""
    if isinstance(args, str):
        return args
    try:
        return orjson.dumps(args, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return str(args)


@dataclass(slots=True)
class _ErrorGroup:
    etype: str
    template: str
    example: str
    where: str  # "line N" plus the time when known
    frame: str  # innermost traceback frame of the first example, if any
    count: int = 0


@dataclass(slots=True)
class _Digest:
    """Everything the summary needs, gathered in one pass over the lines."""

    total: int = 0
    formats: dict[str, int] = field(default_factory=lambda: {"json": 0, "logfmt": 0, "plain": 0})
    agent: str = ""
    task: str = ""
    models: list[str] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    max_step: int = 0
    steps: list[str] = field(default_factory=list)  # step-ish lines, described
    errors: dict[tuple[str, str], _ErrorGroup] = field(default_factory=dict)
    error_lines: int = 0
    tool_calls: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # -> [count, first]
    end: dict[str, Any] | None = None
    first_ts: str = ""
    last_ts: str = ""
    last_desc: str = ""


def _describe_step(ev: str, d: dict[str, Any]) -> str:
    step = _str(d.get("step"))
    at = _hms(_get(d, "ts", "time", "timestamp"))
    prefix = (f"{at} " if at else "") + (f"step {step}: " if step else "")
    if ev == "tool.call":
        args = _args_key(d.get("args"))
        return _clean(f"{prefix}tool {_str(d.get('tool'))} {args}".rstrip(), 110)
    if ev == "llm.call":
        model = _str(_get(d, "model", "gen_ai.request.model"))
        tin = _int(_get(d, "input_tokens", "gen_ai.usage.input_tokens"))
        tout = _int(_get(d, "output_tokens", "gen_ai.usage.output_tokens"))
        return _clean(f"{prefix}llm {model} {tin}->{tout} tokens", 110)
    return _clean(f"{prefix}{_str(_get(d, 'msg', 'message'))}", 110)


class ExtractiveSummarizer:
    """`ports.Summarizer` without a model: see the module docstring."""

    name = "extractive"

    def __init__(
        self,
        *,
        max_lines: int = 40,
        steps_each_end: int = 3,
        max_error_groups: int = 6,
        max_loops: int = 3,
        loop_threshold: int = 3,
    ) -> None:
        self.max_lines = max_lines
        self.steps_each_end = steps_each_end
        self.max_error_groups = max_error_groups
        self.max_loops = max_loops
        self.loop_threshold = loop_threshold  # identical tool calls that hint at a loop

    async def summarize(self, task: Task, lines: Sequence[str]) -> AsyncIterator[str]:
        digest = await self._digest(lines)
        sections = [
            self._facts(task, digest),
            self._steps(digest),
            self._errors(digest),
            self._loops(digest),
            self._final(task, digest),
        ]
        budget = self.max_lines
        for section in sections:
            if not section or budget <= 0:
                continue
            if len(section) > budget:  # never with the default limits; a guard for small ones
                section = [*section[: budget - 1], "(summary truncated)"]
            budget -= len(section)
            yield "\n".join(section) + "\n"

    # ------------------------------------------------------------ one pass over the lines

    async def _digest(self, lines: Sequence[str]) -> _Digest:
        g = _Digest()
        for i, raw in enumerate(lines, 1):
            if i % 5000 == 0:
                await asyncio.sleep(0)  # a huge run must not hold the event loop
            fmt, d = _parse(raw)
            g.total += 1
            g.formats[fmt] += 1
            ev = _str(d.get("event"))
            ts = _get(d, "ts", "time", "timestamp")
            if isinstance(ts, str) and ts:
                g.first_ts = g.first_ts or ts
                g.last_ts = ts
            if fmt == "plain":
                g.last_desc = _clean(raw, 110)
                if _PLAIN_ERROR.search(raw):
                    self._add_error(g, "", _clean(raw, 300), i, "", "")
                continue
            g.agent = g.agent or _str(_get(d, "agent", "service_name", "service.name"))
            g.task = g.task or _str(d.get("task"))
            model = _str(_get(d, "model", "gen_ai.request.model"))
            if model and model not in g.models:
                g.models.append(model)
            g.max_step = max(g.max_step, _int(d.get("step")))
            if ev == "llm.call":
                g.input_tokens += _int(_get(d, "input_tokens", "gen_ai.usage.input_tokens"))
                g.output_tokens += _int(_get(d, "output_tokens", "gen_ai.usage.output_tokens"))
                g.cost_usd += _float(d.get("cost_usd"))
            if ev in _STEP_EVENTS:
                g.steps.append(_describe_step(ev, d))
            if ev == "tool.call":
                key = (_str(d.get("tool")), _args_key(d.get("args")))
                seen = g.tool_calls.get(key)
                if seen is None:
                    g.tool_calls[key] = [1, i]
                else:
                    seen[0] += 1
            if ev == "run.end":
                g.end = d
            message = _get(d, "error.message", "exception.message")
            level = _str(_get(d, "level", "severity_text", "severity")).lower()
            is_error = ev == "error" or message is not None
            if not is_error and ev not in _KNOWN_EVENTS:
                is_error = level in _ERROR_LEVELS
            if is_error:
                etype = _clean(_get(d, "error.type", "exception.type") or "", 60)
                if message is None:
                    message = _get(d, "msg", "message") or raw
                stack = _str(_get(d, "error.stack", "exception.stacktrace"))
                frames = _FRAME.findall(stack)
                frame = f"{frames[-1][0]}:{frames[-1][1]} in {frames[-1][2]}" if frames else ""
                self._add_error(g, etype, _clean(message, 300), i, _hms(ts), frame)
            g.last_desc = (
                _describe_step(ev, d)
                if ev in _STEP_EVENTS
                else _clean(f"{_hms(ts)} {ev or fmt}: {_str(_get(d, 'msg', 'message'))}", 110)
            )
        return g

    @staticmethod
    def _add_error(g: _Digest, etype: str, message: str, i: int, at: str, frame: str) -> None:
        g.error_lines += 1
        key = (etype, mask_message(message))
        grp = g.errors.get(key)
        if grp is None:
            where = f"line {i}" + (f", {at}" if at else "")
            grp = g.errors[key] = _ErrorGroup(etype, key[1], message, where, frame)
        grp.count += 1

    # ------------------------------------------------------------ sections

    def _facts(self, task: Task, g: _Digest) -> list[str]:
        agent = _clean(task.agent or g.agent or "unknown agent", 40)
        name = _clean(task.task or g.task or "(no task name)", 80)
        status = task.status.value
        if task.status is RunStatus.RUNNING and g.end is not None and g.end.get("status"):
            status = _clean(g.end["status"], 30)  # the table has not caught up with the logs
        end_ms = _end_duration_ms(g.end) if g.end is not None else None
        if task.duration_ns is not None:
            duration = _duration(task.duration_ns / 1e6)
        elif end_ms is not None:
            duration = _duration(end_ms)
        elif (span_ms := _span_ms(g.first_ts, g.last_ts)) is not None:
            duration = _duration(span_ms)
        else:
            duration = "unknown time"
        errors = task.error_count or g.error_lines
        steps = task.step_count or g.max_step or len(g.steps)
        models = task.model or ", ".join(g.models[:3]) or "none seen"
        tin = task.input_tokens or g.input_tokens
        tout = task.output_tokens or g.output_tokens
        cost = task.cost_usd or g.cost_usd
        f = g.formats
        return [
            f"Offline summary (extractive, no AI): {agent} run {_clean(task.run_id, 60)}"
            f" {status} after {duration}.",
            f"Task: {name}",
            f"Steps: {steps}; errors: {errors} in {len(g.errors)} distinct;"
            f" model: {_clean(models, 70)}",
            f"Tokens: {tin} in / {tout} out; cost: ${cost:.4f}",
            f"Read {g.total} log lines ({f['json']} JSON, {f['logfmt']} logfmt,"
            f" {f['plain']} plain text).",
        ]

    def _steps(self, g: _Digest) -> list[str]:
        if not g.steps:
            return ["Steps: none logged."]
        n = self.steps_each_end
        if len(g.steps) <= 2 * n:
            return [f"Steps ({_plural(len(g.steps), 'step line')}):", *(f"  {s}" for s in g.steps)]
        skipped = len(g.steps) - 2 * n
        return [
            f"First and last steps ({len(g.steps)} step lines):",
            *(f"  {s}" for s in g.steps[:n]),
            f"  ... {skipped} more ...",
            *(f"  {s}" for s in g.steps[-n:]),
        ]

    def _errors(self, g: _Digest) -> list[str]:
        if not g.errors:
            return ["Errors: none."]
        # most frequent first; ties in order of first appearance (dicts keep insertion order)
        groups = sorted(g.errors.values(), key=lambda e: -e.count)
        out = [f"Errors ({_plural(g.error_lines, 'line')}, {len(groups)} distinct):"]
        for grp in groups[: self.max_error_groups]:
            tmpl = grp.template
            if grp.etype and not tmpl.startswith(grp.etype):
                tmpl = f"{grp.etype}: {tmpl}"
            out.append("  " + _clean(f"{grp.count}x {tmpl}", 150))
            example = "" if grp.example == grp.template else f': "{grp.example}"'
            frame = f" at {grp.frame}" if grp.frame else ""
            out.append("     " + _clean(f"first at {grp.where}{frame}{example}", 150))
        hidden = len(groups) - self.max_error_groups
        if hidden > 0:
            out.append(f"  ... and {hidden} more distinct errors")
        return out

    def _loops(self, g: _Digest) -> list[str]:
        repeated = [
            (count, first, tool, args)
            for (tool, args), (count, first) in g.tool_calls.items()
            if count >= self.loop_threshold
        ]
        if not repeated:
            return []
        repeated.sort(key=lambda r: (-r[0], r[1]))
        out = ["Repeated tool calls with identical arguments (possible loop):"]
        for count, first, tool, args in repeated[: self.max_loops]:
            out.append("  " + _clean(f"{count}x {tool} {args} (first at line {first})", 150))
        return out

    def _final(self, task: Task, g: _Digest) -> list[str]:
        if g.end is not None:
            e = g.end
            status = _clean(_str(e.get("status")) or "unknown", 30)
            ms = _end_duration_ms(e)
            took = f" after {_duration(ms)}" if ms is not None else ""
            msg = _clean(_str(_get(e, "msg", "message")), 100)
            at = _hms(_get(e, "ts", "time", "timestamp"))
            when = f" at {at}" if at else ""
            return [f"Final: run.end{when}, status {status}{took}" + (f": {msg}" if msg else "")]
        if g.total == 0:
            return ["Final: no log lines were found for this run."]
        if task.status in TERMINAL_STATUSES:
            return [f"Final: no run.end line in these logs; the task table says {task.status}."]
        last = f" Last line: {g.last_desc}" if g.last_desc else ""
        return [f"Final: no run.end line (still running, stalled or cut off).{last}"]


def _end_duration_ms(d: dict[str, Any]) -> float | None:
    """duration_ms of a run.end record, if it carries one."""
    v = d.get("duration_ms")
    if v is None:
        return None
    f = _float(v)
    return f if f >= 0 else None
