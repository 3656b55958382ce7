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
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from ..events import FieldNames, extract_event, parse_line_fields
from ..models import EventKind, Pattern, PatternKind, RunStatus, TailEntry, Task
from .miner import TemplateMiner

ERROR_LEVELS = frozenset({"error", "err", "fatal", "critical", "crit", "panic", "emerg", "alert"})
ERROR_LEVEL_RE = "(?i)(error|err|fatal|critical|crit|panic|emerg|alert)"
WARN_LEVEL_RE = "(?i)(warn|warning)"
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
_RETRY = re.compile(r"(?i)\b(429|50[0234])\b|rate.?limit|retry|retrying|throttl")


@dataclass(slots=True)
class ErrorLine:
    ts: int
    message: str  # what the miner sees: "Type: message", or the line's text
    run_id: str
    agent: str
    raw: str


@dataclass(slots=True)
class Signal:
    kind: PatternKind
    key: str  # what makes two occurrences the same signal (e.g. agent + tool)
    description: str
    ts: int
    run_id: str
    agent: str
    sample: str


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


def error_lines(entries: Iterable[TailEntry], names: FieldNames) -> list[ErrorLine]:
    """The error lines among `entries` (oldest first), with the message to mine."""
    out: list[ErrorLine] = []
    in_traceback: dict[tuple[tuple[str, str], ...], bool] = {}
    for te in entries:
        e = te.entry
        labels = {**te.labels, **e.metadata}
        fields = parse_line_fields(e.line)
        level = _level_of(labels, fields, names)
        ev = extract_event(e.ts, e.line, te.labels, e.metadata, names)
        if ev is not None and ev.kind == EventKind.RUN_END:
            continue
        if fields is None:
            # Plain text: fold a multi-line traceback into its last line.
            skey = tuple(sorted(te.labels.items()))
            text = e.line.rstrip()
            if text.startswith("Traceback (most recent call last)"):
                in_traceback[skey] = True
                continue
            if in_traceback.get(skey):
                if text[:1] in (" ", "\t") or not text:
                    continue
                in_traceback[skey] = False
                out.append(_plain(e.ts, text, labels, names))
                continue
        is_error = level in ERROR_LEVELS or (ev is not None and ev.kind == EventKind.ERROR)
        if not is_error and fields is None and not level:
            is_error = bool(_LOOKS_LIKE_ERROR.search(e.line))
        if not is_error:
            continue
        if ev is not None and (ev.error_type or ev.error_message):
            msg = ev.error_message
            if ev.error_type and not msg.startswith(ev.error_type):
                msg = f"{ev.error_type}: {msg}" if msg else ev.error_type
        elif fields is not None:
            m = fields.get("msg") or fields.get("message") or e.line
            msg = str(m)
        else:
            msg = e.line
        out.append(
            ErrorLine(
                ts=e.ts,
                message=msg.strip()[:2000],
                run_id=ev.run_id if ev else labels.get(names.run_id, ""),
                agent=(ev.agent if ev else "") or labels.get(names.agent, ""),
                raw=e.line,
            )
        )
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
) -> tuple[list[Pattern], list[int]]:
    """Error templates of the window [start, end), compared with the previous window of the same
    length (lines before `start`). Returns the patterns and the error count per bucket."""
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
    out = []
    for cid, acc in accs.items():
        if not acc.count:
            continue
        cluster = miner.get(cid)
        acc.template = cluster.template if cluster else ""
        out.append(_finish(PatternKind.ERROR, acc.template, acc))
    return out, per_bucket


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
    calls: dict[tuple[str, str, bytes], list[tuple[int, str, str]]] = defaultdict(list)
    for te in entries:
        e = te.entry
        fields = parse_line_fields(e.line)
        if not fields:
            continue
        ev = extract_event(e.ts, e.line, te.labels, e.metadata, names)
        if ev is None or ev.kind != EventKind.TOOL_CALL or not ev.tool:
            continue
        args = fields.get("args", fields.get("arguments", fields.get("gen_ai.tool.call.arguments")))
        key = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
        calls[(ev.run_id, ev.tool, key)].append((e.ts, ev.agent, e.line))
    out = []
    for (run_id, tool, _args), seen in calls.items():
        if len(seen) >= LOOP_MIN:
            ts, agent, line = seen[LOOP_MIN - 1]
            out.append(
                Signal(
                    kind=PatternKind.LOOP,
                    key=f"{agent}:{tool}",
                    description=f"loop: {agent or 'an agent'} called {tool} {LOOP_MIN}+ times "
                    "with identical arguments in one run",
                    ts=ts,
                    run_id=run_id,
                    agent=agent,
                    sample=line,
                )
            )
    return out


def retry_storm_signals(entries: Iterable[TailEntry], names: FieldNames) -> list[Signal]:
    """Runs with STORM_MIN or more 429/5xx/retry lines within STORM_SPAN_NS."""
    per_run: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for te in entries:
        e = te.entry
        if not _RETRY.search(e.line):
            continue
        ev = extract_event(e.ts, e.line, te.labels, e.metadata, names)
        if ev is None or not ev.run_id:
            continue
        per_run[ev.run_id].append((e.ts, ev.agent, e.line))
    out = []
    for run_id, hits in per_run.items():
        hits.sort()
        lo = 0
        for hi in range(len(hits)):
            while hits[hi][0] - hits[lo][0] > STORM_SPAN_NS:
                lo += 1
            if hi - lo + 1 >= STORM_MIN:
                ts, agent, line = hits[hi]
                out.append(
                    Signal(
                        kind=PatternKind.RETRY_STORM,
                        key=agent,
                        description=f"retry storm: {STORM_MIN}+ rate-limit/5xx retries within "
                        f"{STORM_SPAN_NS // 1_000_000_000}s in one run of {agent or 'an agent'}",
                        ts=ts,
                        run_id=run_id,
                        agent=agent,
                        sample=line,
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
