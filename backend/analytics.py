"""Analytics over runs and LLM calls: pure functions, fed by the facade.

Percentiles use the nearest-rank method (the value at rank ceil(p/100 * n)), so every figure is a
value that was actually observed and tests can state exact expectations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .events import FieldNames, extract_event, parse_line_fields
from .models import (
    TERMINAL_STATUSES,
    EventKind,
    ModelUsage,
    Percentiles,
    Performance,
    RunStatus,
    TailEntry,
    Task,
    WindowStats,
)

NS = 1_000_000_000


def percentiles(values: Iterable[float]) -> Percentiles | None:
    vals = sorted(values)
    if not vals:
        return None

    def rank(p: float) -> float:
        return vals[max(0, math.ceil(p / 100 * len(vals)) - 1)]

    return Percentiles(count=len(vals), p50=rank(50), p95=rank(95), p99=rank(99))


def _started(t: Task) -> int:
    return t.started_at if t.started_at is not None else (t.last_seen or 0)


def window_stats(
    tasks: Sequence[Task],
    start_ns: int,
    end_ns: int,
    *,
    error_lines: int = 0,
    log_lines: int = 0,
    log_bytes: int = 0,
) -> WindowStats:
    """Runs that started in [start, end), with the log figures the caller measured."""
    w = WindowStats(
        start_ns=start_ns,
        end_ns=end_ns,
        by_status={s.value: 0 for s in RunStatus},
        error_lines=error_lines,
        log_lines=log_lines,
        log_bytes=log_bytes,
    )
    for t in tasks:
        if not start_ns <= _started(t) < end_ns:
            continue
        w.runs += 1
        w.by_status[t.status.value] += 1
        w.input_tokens += t.input_tokens
        w.output_tokens += t.output_tokens
        w.cost_usd += t.cost_usd
    w.active = w.by_status[RunStatus.RUNNING.value]
    w.stalled = w.by_status[RunStatus.STALLED.value]
    ended = sum(w.by_status[s.value] for s in TERMINAL_STATUSES)
    w.success_rate = w.by_status[RunStatus.SUCCEEDED.value] / ended if ended else None
    w.cost_usd = round(w.cost_usd, 6)
    return w


@dataclass(slots=True)
class LlmCall:
    ts: int
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float | None


def llm_calls(entries: Iterable[TailEntry], names: FieldNames) -> list[LlmCall]:
    out = []
    for te in entries:
        e = te.entry
        ev = extract_event(e.ts, e.line, te.labels, e.metadata, names)
        if ev is None or ev.kind != EventKind.LLM_CALL:
            continue
        fields = parse_line_fields(e.line) or {}
        lat = fields.get("latency_ms", fields.get("duration_ms"))
        latency = float(lat) if isinstance(lat, int | float) and not isinstance(lat, bool) else None
        out.append(LlmCall(e.ts, ev.model, ev.input_tokens, ev.output_tokens, ev.cost_usd, latency))
    return out


def performance(
    tasks: Sequence[Task],
    calls: Sequence[LlmCall],
    start_ns: int,
    end_ns: int,
    buckets: int = 24,
) -> Performance:
    bucket_ns = max(1, (end_ns - start_ns) // buckets)
    by_agent: dict[str, list[float]] = defaultdict(list)
    by_task: dict[str, list[float]] = defaultdict(list)
    by_bucket: list[list[float]] = [[] for _ in range(buckets)]
    started = [0] * buckets
    for t in tasks:
        s = _started(t)
        if not start_ns <= s < end_ns:
            continue
        b = min(buckets - 1, (s - start_ns) // bucket_ns)
        started[b] += 1
        if t.status in TERMINAL_STATUSES and t.duration_ns is not None:
            d = t.duration_ns / NS
            by_agent[t.agent].append(d)
            by_task[t.task].append(d)
            by_bucket[b].append(d)
    models: dict[str, ModelUsage] = {}
    latencies: dict[str, list[float]] = defaultdict(list)
    for c in calls:
        if not start_ns <= c.ts < end_ns:
            continue
        m = models.setdefault(c.model, ModelUsage(model=c.model))
        m.calls += 1
        m.input_tokens += c.input_tokens
        m.output_tokens += c.output_tokens
        m.cost_usd = round(m.cost_usd + c.cost_usd, 6)
        if c.latency_ms is not None:
            latencies[c.model].append(c.latency_ms)
    for name, m in models.items():
        m.latency_ms = percentiles(latencies[name])
    hours = bucket_ns / (3600 * NS)
    edges = [(start_ns + (i + 1) * bucket_ns) / NS for i in range(buckets)]
    return Performance(
        start_ns=start_ns,
        end_ns=end_ns,
        bucket_ns=bucket_ns,
        duration_by_agent={k: p for k, v in sorted(by_agent.items()) if (p := percentiles(v))},
        duration_by_task={k: p for k, v in sorted(by_task.items()) if (p := percentiles(v))},
        duration_by_bucket=[(edges[i], percentiles(v)) for i, v in enumerate(by_bucket)],
        runs_per_hour=[(edges[i], n / hours) for i, n in enumerate(started)],
        models=sorted(models.values(), key=lambda m: (-m.cost_usd, m.model)),
        llm_latency_ms=percentiles(x for v in latencies.values() for x in v),
    )
