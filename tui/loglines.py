"""Display lines for the log views: made from backend entries, shown sanitized."""

from __future__ import annotations

import itertools
import re
from typing import Any

import orjson
from rich.cells import cell_len

from backend.models import TailEntry

from .fmt import clock_time, short_id
from .sanitize import sanitize

__all__ = ["LEVEL_STYLES", "LineMaker", "LogLine", "marker_line"]

ERROR, WARN, INFO, DEBUG, MARKER = "error", "warn", "info", "debug", "marker"

LEVEL_STYLES: dict[str, str] = {
    ERROR: "red",
    WARN: "yellow",
    INFO: "",
    DEBUG: "bright_black",
    MARKER: "bold black on yellow",
}

_LEVEL_NAMES = {
    "error": ERROR,
    "err": ERROR,
    "fatal": ERROR,
    "critical": ERROR,
    "crit": ERROR,
    "panic": ERROR,
    "alert": ERROR,
    "emerg": ERROR,
    "warn": WARN,
    "warning": WARN,
    "info": INFO,
    "notice": INFO,
    "debug": DEBUG,
    "trace": DEBUG,
}
_SNIFF = re.compile(
    r'"(?:level|severity_text)"\s*:\s*"(\w+)"|\blevel=(\w+)|\b(ERROR|FATAL|PANIC|WARN(?:ING)?)\b'
)
_seq = itertools.count()


class LogLine:
    """One display line. Made cheaply when it arrives (time, level, run id and the raw line);
    its display text (sanitized, JSON compacted) is made the first time it is shown or searched,
    so lines that scroll past at 10,000/s cost almost nothing. Every text attribute a view reads
    (`prefix`, `body`, `raw`, `original`) is sanitized."""

    __slots__ = ("_agent", "_body", "_line", "_maker", "_prefix", "level", "run_id", "seq", "ts")

    def __init__(
        self,
        seq: int,
        ts: int,
        prefix: str | None,
        body: str | None,
        level: str,
        run_id: str = "",
        raw: str = "",
        *,
        agent: str = "",
        maker: LineMaker | None = None,
    ) -> None:
        self.seq = seq  # unique and increasing: the render cache key
        self.ts = ts
        self.level = level
        self.run_id = run_id
        self._prefix = prefix
        self._body = body
        self._line = raw  # eager form: the sanitized raw line, if it differs from the body
        self._agent = agent
        self._maker = maker

    @property
    def prefix(self) -> str:
        """`HH:MM:SS agent      run-id ` (sanitized)."""
        if self._prefix is None:
            assert self._maker is not None
            self._prefix = self._maker.prefix(self.ts, self._agent, self.run_id)
        return self._prefix

    @property
    def body(self) -> str:
        """What the view shows (sanitized): the compact form of a JSON line, else the line."""
        if self._body is None:
            assert self._maker is not None
            compact = self._maker.compact(self._line)
            self._body = sanitize(self._line if compact is None else compact)
            self._line = "" if compact is None else sanitize(self._line)
        return self._body

    @property
    def raw(self) -> str:
        """The line as logged (sanitized) when `body` is its compact form, else ""."""
        _ = self.body
        return self._line

    @property
    def original(self) -> str:
        return self.raw or self.body

    @property
    def is_error(self) -> bool:
        return self.level == ERROR

    def width_hint(self) -> int:
        """About how many cells the line takes, without making its display text (for the
        horizontal scroll range; a line not shown yet is measured as logged: an upper bound)."""
        if self._body is None and self._maker is not None:
            return self._maker.prefix_width + len(self._line)
        body = self.original
        return len(self.prefix) + (len(body) if body.isascii() else cell_len(body))


def marker_line(text: str, ts: int = 0) -> LogLine:
    """A line that is not a log line: dropped-lines notices and the like."""
    return LogLine(next(_seq), ts, "", sanitize(text), MARKER)


def level_of(label: str, line: str) -> str:
    if label:
        return _LEVEL_NAMES.get(label.lower(), INFO)
    m = _SNIFF.search(line, 0, 400)
    if m is None:
        return INFO
    word = (m.group(1) or m.group(2) or m.group(3) or "").lower()
    return _LEVEL_NAMES.get(word, INFO)


_TIME_KEYS = ("ts", "time", "timestamp", "@timestamp")
_MSG_KEYS = ("msg", "message")
RUN_ID_WIDTH = 6


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v if v and " " not in v and "=" not in v else orjson.dumps(v).decode()
    if isinstance(v, bool) or v is None:
        return orjson.dumps(v).decode()
    if isinstance(v, int | float):
        return str(v)
    return orjson.dumps(v).decode()


class LineMaker:
    """Turns backend entries into display lines; knows the configured label/field names.

    A JSON line is shown compactly: `event message key=value ...`, without the fields the prefix
    and the colour already show (time, level, agent, run id; the task when showing one run); the
    line as logged is kept in `raw` (copied by `y`, shown by the raw toggle `v`). Anything else
    is shown as logged."""

    def __init__(
        self,
        *,
        agent_label: str,
        level_label: str,
        run_id_field: str,
        event_field: str = "event",
        task_field: str = "task",
        show_agent: bool = True,
    ) -> None:
        self.agent_label = agent_label
        self.level_label = level_label
        self.run_id_field = run_id_field
        self.event_field = event_field
        self.task_field = task_field
        self.show_agent = show_agent

    def compact(self, line: str) -> str | None:
        if not line.startswith("{"):
            return None
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        for key in (*_TIME_KEYS, self.level_label, "level", self.agent_label, self.run_id_field):
            obj.pop(key, None)
        obj.pop("service_name", None)
        if not self.show_agent:  # one run: its task name is the same on every line
            obj.pop(self.task_field, None)
        head = [str(obj.pop(self.event_field, "") or "")]
        for key in _MSG_KEYS:
            if key in obj:
                head.append(str(obj.pop(key)))
                break
        rest = [f"{k}={_value(v)}" for k, v in obj.items()]
        return " ".join(p for p in (*head, *rest) if p)

    def prefix(self, ts: int, agent: str, run_id: str) -> str:
        prefix = clock_time(ts) + " "
        if self.show_agent:
            rid = short_id(run_id, RUN_ID_WIDTH)
            prefix += f"{sanitize(agent)[:10]:<10} {rid:<{RUN_ID_WIDTH}} "
        return prefix

    @property
    def prefix_width(self) -> int:
        return 9 + (12 + RUN_ID_WIDTH if self.show_agent else 0)

    def make(self, te: TailEntry) -> LogLine:
        e = te.entry
        labels = te.labels
        return LogLine(
            next(_seq),
            e.ts,
            None,
            None,
            level_of(labels.get(self.level_label, ""), e.line),
            labels.get(self.run_id_field) or e.metadata.get(self.run_id_field, ""),
            e.line,
            agent=labels.get(self.agent_label, ""),
            maker=self,
        )

    def make_all(self, entries: list[TailEntry], *, eager: bool = False) -> list[LogLine]:
        """Display lines for `entries`; `eager` also makes their display text now (call it off
        the UI loop for a big log that will be searched)."""
        lines = [self.make(te) for te in entries]
        if eager:
            for line in lines:
                _ = line.body, line.prefix
        return lines
