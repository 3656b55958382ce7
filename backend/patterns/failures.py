"""Failure patterns over a time window: mined error templates and agent failure signals.

Pure functions over log entries and tasks (no I/O), so the same code serves the embedded store and
Loki; the facade fetches the lines and caches the report.

Rules, each with a test:

- *error line*: a line whose level (label, field, `detected_level`) is error/fatal/critical, or
  whose event is `error`, or which carries `error.type`/`exception.type`; plain text counts when it
  looks like an error. A `run.end` summary line is not an error line (its cause was logged before).
  A multi-line traceback logged as separate lines counts once, keyed by its last line.
- *loop*: the same tool called with the same arguments `LOOP_MIN` or more times in one run.
- *retry storm*: `STORM_MIN` or more 429/5xx/retry lines of one run within `STORM_SPAN_NS`.
- *stall*: a run the task table derives as stalled (running, silent past `tasks.stall_after`).
- *cost spike*: a run costing more than `SPIKE_FACTOR` x its agent's median (and at least
  `SPIKE_MIN_USD`), among agents with at least `SPIKE_MIN_RUNS` runs in the window.
"""

from __future__ import annotations

import hashlib
import re
import statistics
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from ..events import FieldNames, extract_event, parse_line_fields
from ..models import (
    AgentEvent,
    EventKind,
    LogEntry,
    MinerStats,
    Pattern,
    PatternKind,
    RunStatus,
    TailEntry,
    Task,
)
from .miner import TemplateMiner

ERROR_LEVELS = frozenset({"error", "err", "fatal", "critical", "crit", "panic", "emerg", "alert"})
ERROR_LEVEL_RE = "(?i)(error|err|fatal|critical|crit|panic|emerg|alert)"
LOOP_MIN = 3
STORM_MIN = 5
STORM_SPAN_NS = 60 * 1_000_000_000
SPIKE_FACTOR = 5.0
SPIKE_MIN_USD = 0.01
SPIKE_MIN_RUNS = 5
MAX_RUN_IDS = 200
MAX_SAMPLES = 3

_LOOKS_LIKE_ERROR = re.compile(
    r"(?i)\b(error|exception|traceback|fatal|panic|failed|failure)\b|\b[A-Z]\w*(Error|Exception):"
)
RETRY_RE = r"(?i)\b(429|50[0234])\b|rate.?limit|retry|throttl"  # also a LogQL line filter
_RETRY = re.compile(RETRY_RE)
_RETRY_HINTS = (
    "retr",
    "ratelimit",
    "rate limit",
    "rate-limit",
    "rate_limit",
    "rate.limit",
    "throttl",
    "429",
    "500",
    "502",
    "503",
    "504",
)  # every line _RETRY matches contains one of these


def _maybe_retry(line: str) -> bool:
    """Cheap substring pre-check: the regex is ~10x slower and most lines are not retries."""
    low = line.lower()
    return any(h in low for h in _RETRY_HINTS)


@dataclass(slots=True)
class ErrorLine:
    ts: int
    message: str  # what the miner sees: "Type: message", or the line's text
    run_id: str
    agent: str
    raw: str  # the line; "" when only its entry id is known (indexed on ingest)
    entry_id: int = 0


@dataclass(slots=True)
class Signal:
    kind: PatternKind
    key: str  # what makes two occurrences the same signal (e.g. agent + tool)
    description: str
    ts: int
    run_id: str
    agent: str
    sample: str  # "" when only `entry_id` is known; the caller fills it before grouping
    entry_id: int = 0


def _level_of(labels: dict[str, str], fields: dict[str, object] | None, names: FieldNames) -> str:
    for key in (names.level, "detected_level", "severity_text", "severity"):
        v = labels.get(key)
        if v:
            return v.lower()
    if fields:
        for key in (names.level, "severity_text", "severity"):
            fv = fields.get(key)
            if isinstance(fv, str) and fv:
                return fv.lower()
    return ""


class MinerMeter:
    """Lines mined and seconds spent, added a batch at a time from any thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lines = 0
        self._seconds = 0.0

    def add(self, lines: int, seconds: float) -> None:
        with self._lock:
            self._lines += lines
            self._seconds += seconds

    def stats(self) -> MinerStats:
        with self._lock:
            return MinerStats(self.path, self._lines, self._seconds)


class Indexer:
    """Classifies lines one by one (in arrival order per stream) for failure patterns and
    signals. One per stream of lines: it remembers whether a plain-text traceback is open.

    A `timed` indexer (the embedded store's, on ingest) also keeps the lines it classified and
    the time it took (`stats`), as its caller reports them a batch at a time (`count`)."""

    ERROR = 1
    RETRY = 2
    TOOL = 3

    def __init__(self, names: FieldNames, *, timed: bool = False) -> None:
        self.names = names
        self.timed = timed
        self._in_traceback: dict[tuple[tuple[str, str], ...], bool] = {}
        # Written only by the one thread that calls `index`; `stats` may read from another
        # (each attribute read is atomic, a snapshot may be a line apart between the two).
        self._lines = 0
        self._seconds = 0.0

    def stats(self, path: str = "ingest") -> MinerStats:
        return MinerStats(path, self._lines, self._seconds)

    def index(
        self, labels: dict[str, str], e: LogEntry
    ) -> tuple[AgentEvent | None, ErrorLine | None, list[tuple[int, str, str, str]]]:
        """(the agent event of the line, the error line it is, index rows (kind, run id, agent,
        key) for retry lines and tool calls)."""
        names = self.names
        fields = parse_line_fields(e.line)
        ev = extract_event(e.ts, e.line, labels, e.metadata, names, fields)
        rows: list[tuple[int, str, str, str]] = []
        if ev is not None and ev.run_id:
            if ev.kind == EventKind.TOOL_CALL and ev.tool and fields is not None:
                args = fields.get(
                    "args", fields.get("arguments", fields.get("gen_ai.tool.call.arguments"))
                )
                digest = hashlib.sha1(orjson.dumps(args, option=orjson.OPT_SORT_KEYS)).hexdigest()
                rows.append((self.TOOL, ev.run_id, ev.agent, f"{ev.tool}\x00{digest[:16]}"))
            elif _maybe_retry(e.line) and _RETRY.search(e.line):
                rows.append((self.RETRY, ev.run_id, ev.agent, ""))
        return ev, self._error(labels, e, fields, ev), rows

    def count(self, lines: int, seconds: float) -> None:
        """Record a batch of `lines` classified in `seconds` (kept only when `timed`)."""
        if self.timed:
            self._lines += lines
            self._seconds += seconds

    def _error(
        self,
        stream_labels: dict[str, str],
        e: LogEntry,
        fields: dict[str, object] | None,
        ev: AgentEvent | None,
    ) -> ErrorLine | None:
        names = self.names
        if ev is not None and ev.kind == EventKind.RUN_END:
            return None
        labels = {**stream_labels, **e.metadata} if e.metadata else stream_labels
        if fields is None:
            # Plain text: fold a multi-line traceback into its last line.
            skey = tuple(sorted(stream_labels.items()))
            text = e.line.rstrip()
            if text.startswith("Traceback (most recent call last)"):
                self._in_traceback[skey] = True
                return None
            if self._in_traceback.get(skey):
                if text[:1] in (" ", "\t") or not text:
                    return None
                self._in_traceback[skey] = False
                return _plain(e.ts, text, labels, names)
        level = _level_of(labels, fields, names)
        is_error = level in ERROR_LEVELS or (ev is not None and ev.kind == EventKind.ERROR)
        if not is_error and fields is None and not level:
            is_error = bool(_LOOKS_LIKE_ERROR.search(e.line))
        if not is_error:
            return None
        if ev is not None and (ev.error_type or ev.error_message):
            msg = ev.error_message
            if ev.error_type and not msg.startswith(ev.error_type):
                msg = f"{ev.error_type}: {msg}" if msg else ev.error_type
        elif fields is not None:
            msg = str(fields.get("msg") or fields.get("message") or e.line)
        else:
            msg = e.line
        return ErrorLine(
            ts=e.ts,
            message=msg.strip()[:2000],
            run_id=ev.run_id if ev else labels.get(names.run_id, ""),
            agent=(ev.agent if ev else "") or labels.get(names.agent, ""),
            raw=e.line,
        )


def error_lines(entries: Iterable[TailEntry], names: FieldNames) -> list[ErrorLine]:
    """The error lines among `entries` (oldest first), with the message to mine."""
    ix = Indexer(names)
    out = []
    for te in entries:
        e = te.entry
        fields = parse_line_fields(e.line)
        ev = extract_event(e.ts, e.line, te.labels, e.metadata, names, fields)
        err = ix._error(te.labels, e, fields, ev)
        if err is not None:
            out.append(err)
    return out


def _plain(ts: int, text: str, labels: dict[str, str], names: FieldNames) -> ErrorLine:
    return ErrorLine(
        ts=ts,
        message=text.strip()[:2000],
        run_id=labels.get(names.run_id, ""),
        agent=labels.get(names.agent, ""),
        raw=text,
    )


def _pattern_id(kind: PatternKind, key: str) -> str:
    return kind.value[:1] + hashlib.sha1(f"{kind}:{key}".encode()).hexdigest()[:10]


@dataclass(slots=True)
class _Acc:
    template: str = ""
    count: int = 0
    prev: int = 0
    runs: dict[str, None] = field(default_factory=dict)
    agents: set[str] = field(default_factory=set)
    first: int = 0
    last: int = 0
    trend: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)


def _bucket(ts: int, start: int, bucket_ns: int, n: int) -> int:
    return min(n - 1, max(0, (ts - start) // bucket_ns))


def _finish(kind: PatternKind, key: str, acc: _Acc) -> Pattern:
    return Pattern(
        id=_pattern_id(kind, key),
        kind=kind,
        template=acc.template,
        count=acc.count,
        run_ids=list(acc.runs)[:MAX_RUN_IDS],
        run_count=len(acc.runs),
        agents=sorted(acc.agents),
        first_seen=acc.first,
        last_seen=acc.last,
        trend=acc.trend,
        samples=acc.samples,
        new=acc.prev == 0,
        previous_count=acc.prev,
        growth=(acc.count / acc.prev) if acc.prev else None,
    )


def _add(acc: _Acc, ts: int, run_id: str, agent: str, sample: str, b: int) -> None:
    acc.count += 1
    if run_id:
        acc.runs.setdefault(run_id, None)
    if agent:
        acc.agents.add(agent)
    acc.first = ts if not acc.first else min(acc.first, ts)
    acc.last = max(acc.last, ts)
    acc.trend[b] += 1
    if len(acc.samples) < MAX_SAMPLES and sample not in acc.samples:
        acc.samples.append(sample[:500])


def mine_patterns(
    lines: Sequence[ErrorLine],
    start_ns: int,
    end_ns: int,
    buckets: int,
) -> tuple[list[Pattern], list[int], dict[str, list[int]]]:
    """Error templates of the window [start, end), compared with the previous window of the same
    length (lines before `start`). Returns the patterns, the error count per bucket, and for
    lines known only by entry id, the sample entry ids per pattern id (to fetch and fill in)."""
    miner = TemplateMiner()
    ids = miner.add_many(line.message for line in lines)
    bucket_ns = max(1, (end_ns - start_ns) // buckets)
    per_bucket = [0] * buckets
    accs: dict[int, _Acc] = {}
    for line, cid in zip(lines, ids, strict=True):
        cid = miner.resolve(cid)
        acc = accs.get(cid)
        if acc is None:
            acc = accs[cid] = _Acc(trend=[0] * buckets)
        if line.ts < start_ns:
            acc.prev += 1
            continue
        if line.ts >= end_ns:
            continue
        b = _bucket(line.ts, start_ns, bucket_ns, buckets)
        per_bucket[b] += 1
        _add(acc, line.ts, line.run_id, line.agent, line.raw, b)
        if not line.raw and len(acc.sample_ids) < MAX_SAMPLES:
            acc.sample_ids.append(line.entry_id)
    out = []
    sample_ids: dict[str, list[int]] = {}
    for cid, acc in accs.items():
        if not acc.count:
            continue
        cluster = miner.get(cid)
        acc.template = cluster.template if cluster else ""
        if acc.sample_ids:
            acc.samples = []
        pattern = _finish(PatternKind.ERROR, acc.template, acc)
        if acc.sample_ids:
            sample_ids[pattern.id] = acc.sample_ids
        out.append(pattern)
    return out, per_bucket, sample_ids


def signal_patterns(
    signals: Iterable[Signal], start_ns: int, end_ns: int, buckets: int
) -> list[Pattern]:
    """Group signal occurrences (of the current and previous window) into patterns."""
    bucket_ns = max(1, (end_ns - start_ns) // buckets)
    accs: dict[tuple[PatternKind, str], _Acc] = {}
    for s in signals:
        acc = accs.get((s.kind, s.key))
        if acc is None:
            acc = accs[(s.kind, s.key)] = _Acc(template=s.description, trend=[0] * buckets)
        if s.ts < start_ns:
            acc.prev += 1
            continue
        _add(acc, s.ts, s.run_id, s.agent, s.sample, _bucket(s.ts, start_ns, bucket_ns, buckets))
    return [_finish(kind, key, acc) for (kind, key), acc in accs.items() if acc.count]


def loop_signals(entries: Iterable[TailEntry], names: FieldNames) -> list[Signal]:
    """Runs that called the same tool with the same arguments LOOP_MIN or more times."""
    ix = Indexer(names)
    calls: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    for te in entries:
        _, _, rows = ix.index(te.labels, te.entry)
        for kind, run_id, agent, key in rows:
            if kind == Indexer.TOOL:
                calls[(run_id, key)].append((te.entry.ts, agent, te.entry.line))
    groups = []
    for (run_id, key), seen in calls.items():
        if len(seen) >= LOOP_MIN:
            ts, agent, line = max(seen)
            groups.append(LoopGroup(run_id, agent, key, len(seen), ts, line))
    return loop_signals_from_groups(groups)


@dataclass(slots=True)
class LoopGroup:
    """Identical tool calls of one run: `key` is the tool and a hash of its arguments."""

    run_id: str
    agent: str
    key: str
    count: int
    ts: int  # the newest of the identical calls
    sample: str
    entry_id: int = 0


def loop_signals_from_groups(groups: Iterable[LoopGroup]) -> list[Signal]:
    out = []
    for g in groups:
        if g.count < LOOP_MIN:
            continue
        tool = g.key.split("\x00", 1)[0]
        out.append(
            Signal(
                kind=PatternKind.LOOP,
                key=f"{g.agent}:{tool}",
                description=f"loop: {g.agent or 'an agent'} called {tool} {LOOP_MIN}+ times "
                "with identical arguments in one run",
                ts=g.ts,
                run_id=g.run_id,
                agent=g.agent,
                sample=g.sample,
                entry_id=g.entry_id,
            )
        )
    return out


def retry_storm_signals(entries: Iterable[TailEntry], names: FieldNames) -> list[Signal]:
    """Runs with STORM_MIN or more 429/5xx/retry lines within STORM_SPAN_NS."""
    ix = Indexer(names)
    hits = []
    for te in entries:
        _, _, rows = ix.index(te.labels, te.entry)
        hits += [
            RetryHit(te.entry.ts, run_id, agent, te.entry.line)
            for kind, run_id, agent, _ in rows
            if kind == Indexer.RETRY
        ]
    return retry_storm_from_hits(hits)


@dataclass(slots=True)
class RetryHit:
    ts: int
    run_id: str
    agent: str
    sample: str
    entry_id: int = 0


def retry_storm_from_hits(hits: Iterable[RetryHit]) -> list[Signal]:
    per_run: dict[str, list[RetryHit]] = defaultdict(list)
    for h in hits:
        per_run[h.run_id].append(h)
    out = []
    for run_id, seq in per_run.items():
        seq.sort(key=lambda h: h.ts)
        lo = 0
        for hi in range(len(seq)):
            while seq[hi].ts - seq[lo].ts > STORM_SPAN_NS:
                lo += 1
            if hi - lo + 1 >= STORM_MIN:
                h = seq[hi]
                out.append(
                    Signal(
                        kind=PatternKind.RETRY_STORM,
                        key=h.agent,
                        description=f"retry storm: {STORM_MIN}+ rate-limit/5xx retries within "
                        f"{STORM_SPAN_NS // 1_000_000_000}s in one run of {h.agent or 'an agent'}",
                        ts=h.ts,
                        run_id=run_id,
                        agent=h.agent,
                        sample=h.sample,
                        entry_id=h.entry_id,
                    )
                )
                break
    return out


def task_signals(tasks: Sequence[Task]) -> list[Signal]:
    """Stalled runs, and runs whose cost is far above their agent's median."""
    out = []
    by_agent: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_agent[t.agent].append(t)
        if t.status == RunStatus.STALLED:
            out.append(
                Signal(
                    kind=PatternKind.STALL,
                    key=t.agent,
                    description=f"stall: runs of {t.agent or 'an agent'} went silent without "
                    "ending",
                    ts=t.last_seen or t.started_at or 0,
                    run_id=t.run_id,
                    agent=t.agent,
                    sample=f"{t.run_id} {t.task}: last event, then silence",
                )
            )
    for agent, runs in by_agent.items():
        costs = [t.cost_usd for t in runs if t.cost_usd > 0]
        if len(costs) < SPIKE_MIN_RUNS:
            continue
        median = statistics.median(costs)
        for t in runs:
            if t.cost_usd >= max(SPIKE_MIN_USD, SPIKE_FACTOR * median):
                out.append(
                    Signal(
                        kind=PatternKind.COST_SPIKE,
                        key=agent,
                        description=f"cost spike: runs of {agent or 'an agent'} costing over "
                        f"{SPIKE_FACTOR:g}x the agent's median (${median:.4f})",
                        ts=t.started_at or t.last_seen or 0,
                        run_id=t.run_id,
                        agent=agent,
                        sample=f"{t.run_id} {t.task}: ${t.cost_usd:.4f}",
                    )
                )
    return out


def sort_by_impact(patterns: list[Pattern]) -> list[Pattern]:
    """Affected runs first, then count, then newest."""
    return sorted(patterns, key=lambda p: (-p.run_count, -p.count, -p.last_seen, p.id))
