"""Failure patterns: error-line rules, mining per window, each agent failure signal, the facade."""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson

from backend.cache import MemoryCache
from backend.config import load_config
from backend.demo.fleet import KNOWN_FAILURE_TEMPLATES, FleetOptions, run_fleet, template_regex
from backend.events import FieldNames
from backend.facade import Backend
from backend.models import LogEntry, PatternKind, RunStatus, Stream, TailEntry, Task
from backend.patterns.failures import (
    LOOP_MIN,
    STORM_MIN,
    error_lines,
    loop_signals,
    mine_patterns,
    retry_storm_signals,
    task_signals,
)

NS = 1_000_000_000
T0 = 1_790_000_000 * NS
NAMES = FieldNames()


def te(ts: int, line: str, **labels: str) -> TailEntry:
    return TailEntry({"agent": "a", **labels}, LogEntry(ts, line))


def j(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def test_error_lines_rules() -> None:
    entries = [
        te(1, j(level="info", event="step", run_id="r1", msg="fine")),
        te(
            2,
            j(
                level="error",
                event="error",
                run_id="r1",
                **{"error.type": "KeyError", "error.message": "KeyError: 'x'"},
            ),
        ),
        te(3, j(level="error", event="run.end", run_id="r1", status="failed")),  # not an error line
        te(4, "plain text that mentions nothing bad"),
        te(5, "ERROR connection refused to db:5432"),
        te(6, "Traceback (most recent call last):"),
        te(7, '  File "agent.py", line 3, in run'),
        te(8, "    do()"),
        te(9, "ValueError: bad input 7"),
        te(10, "an ordinary line afterwards"),
        te(11, "an info line", level="info"),
        te(12, "disk quota reached", level="error", run_id="r2"),
    ]
    got = [(e.ts, e.message, e.run_id) for e in error_lines(entries, NAMES)]
    assert got == [
        (2, "KeyError: 'x'", "r1"),  # the type is not repeated when the message starts with it
        (5, "ERROR connection refused to db:5432", ""),
        (9, "ValueError: bad input 7", ""),  # the traceback counts once, keyed by its last line
        (12, "disk quota reached", "r2"),
    ]


def test_mine_patterns_counts_new_and_growth() -> None:
    start, end = T0, T0 + 600 * NS
    lines = error_lines(
        [te(start - 100 * NS, "ERROR tool search timed out after 30s", run_id="old")]
        + [
            te(start + i * NS, f"ERROR tool search timed out after {i}s", run_id=f"r{i % 3}")
            for i in range(6)
        ]
        + [te(start + 500 * NS, "ERROR disk full on /var/lib/x", run_id="r9")],
        NAMES,
    )
    patterns, per_bucket, _ = mine_patterns(lines, start, end, buckets=10)
    by = {p.template: p for p in patterns}
    timeout = by["ERROR tool search timed out after <*>"]
    assert (timeout.count, timeout.run_count, timeout.previous_count) == (6, 3, 1)
    assert not timeout.new and timeout.growth == 6.0
    assert timeout.trend[0] == 6 and sum(timeout.trend) == 6
    disk = by["ERROR disk full on <*>"]
    assert disk.new and disk.count == 1 and disk.trend[8] == 1
    assert sum(per_bucket) == 7


def test_loop_signal_needs_identical_args() -> None:
    call = {"level": "info", "event": "tool.call", "run_id": "r1", "agent": "a", "tool": "search"}
    same = [te(i, j(**call, args={"q": "x", "n": 5})) for i in range(LOOP_MIN)]
    other = [te(10 + i, j(**{**call, "run_id": "r2"}, args={"q": f"x{i}"})) for i in range(5)]
    sigs = loop_signals(same + other, NAMES)
    assert [(s.kind, s.run_id) for s in sigs] == [(PatternKind.LOOP, "r1")]
    assert loop_signals(same[:-1], NAMES) == []


def test_retry_storm_within_span_only() -> None:
    fast = [
        te(T0 + i * NS, j(level="warn", run_id="r1", msg="HTTP 429, retrying"))
        for i in range(STORM_MIN)
    ]
    slow = [
        te(T0 + i * 100 * NS, j(level="warn", run_id="r2", msg="HTTP 503, retrying"))
        for i in range(STORM_MIN)
    ]
    sigs = retry_storm_signals(fast + slow, NAMES)
    assert [(s.kind, s.run_id) for s in sigs] == [(PatternKind.RETRY_STORM, "r1")]


def test_stall_and_cost_spike_signals() -> None:
    tasks = [Task(run_id=f"r{i}", agent="a", cost_usd=0.01, started_at=T0) for i in range(6)]
    tasks.append(Task(run_id="big", agent="a", cost_usd=0.5, started_at=T0))
    tasks.append(Task(run_id="quiet", agent="b", status=RunStatus.STALLED, last_seen=T0))
    kinds = sorted((s.kind.value, s.run_id) for s in task_signals(tasks))
    assert kinds == [("cost_spike", "big"), ("stall", "quiet")]


async def test_facade_patterns_recover_demo_failure_modes(tmp_path: Path) -> None:
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    backend = await Backend.open(settings)
    try:
        await run_fleet(backend.push, FleetOptions(backfill_s=3600, seed=11, agents=4))
        now = time.time_ns()
        report = await backend.failure_patterns(now - 3600 * NS, now + NS)
        errors = [p for p in report.patterns if p.kind == PatternKind.ERROR]
        assert errors and report.error_lines == sum(p.count for p in errors)
        # the templates' regexes without their anchors: a sample is a whole JSON line
        known = [
            re.compile(template_regex(t).pattern[1:-1]) for t in KNOWN_FAILURE_TEMPLATES.values()
        ]
        for p in errors:  # every sample of every mined pattern is one of the injected modes
            for sample in p.samples:
                assert any(r.search(sample) for r in known), sample
        # impact order: affected runs, then count
        keys = [(-p.run_count, -p.count) for p in report.patterns]
        assert keys == sorted(keys)
        assert {PatternKind.STALL, PatternKind.LOOP} <= {p.kind for p in report.patterns}
        again = await backend.failure_patterns(now - 3600 * NS, now + NS)
        assert again == report  # served from the cache, identical
    finally:
        await backend.close()


async def test_facade_patterns_for_one_run(tmp_path: Path) -> None:
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    backend = await Backend.open(settings)
    try:
        now = time.time_ns()
        lines = [
            j(level="info", event="run.start", run_id="r1", agent="a", task="t"),
            j(
                level="error",
                event="error",
                run_id="r1",
                agent="a",
                **{"error.type": "TimeoutError", "error.message": "tool x timed out after 3s"},
            ),
            j(
                level="error",
                event="error",
                run_id="r1",
                agent="a",
                **{"error.type": "TimeoutError", "error.message": "tool x timed out after 4s"},
            ),
        ]
        await backend.push(
            [
                Stream(
                    {"agent": "a", "level": "info"},
                    [
                        LogEntry(now - 10 * NS + i, ln, {"run_id": "r1"})
                        for i, ln in enumerate(lines)
                    ],
                )
            ]
        )
        report = await backend.failure_patterns(now - 60 * NS, now + NS, run_id="r1")
        assert [(p.template, p.count, p.run_ids) for p in report.patterns] == [
            ("TimeoutError: tool x timed out after <*>", 2, ["r1"])
        ]
    finally:
        await backend.close()


async def test_demo_failure_modes_recovered_exactly(tmp_path: Path) -> None:
    """GA 1.0 on demo data: every injected failure mode is one pattern, with its exact line count
    and its exact set of affected runs."""
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    backend = await Backend.open(settings)
    try:
        now = time.time_ns()
        truth_lines: dict[str, int] = {}
        truth_runs: dict[str, set[str]] = {}
        regexes = {k: template_regex(t) for k, t in KNOWN_FAILURE_TEMPLATES.items()}

        async def push(streams: list[Stream]) -> object:
            for s in streams:
                for e in s.entries:
                    if not e.line.startswith("{"):
                        continue
                    d = orjson.loads(e.line)
                    if d.get("event") != "error":
                        continue
                    (mode,) = [k for k, r in regexes.items() if r.match(d["error.message"])]
                    truth_lines[mode] = truth_lines.get(mode, 0) + 1
                    truth_runs.setdefault(mode, set()).add(d["run_id"])
            return await backend.push(streams)

        await run_fleet(push, FleetOptions(backfill_s=3 * 3600, seed=2), clock=lambda: now)
        report = await backend.failure_patterns(now - 4 * 3600 * NS, now + NS)
        errors = [p for p in report.patterns if p.kind == PatternKind.ERROR]
        got = sorted((p.count, p.run_count) for p in errors)
        want = sorted((truth_lines[m], len(truth_runs[m])) for m in truth_lines)
        assert got == want
        assert len(errors) == len(KNOWN_FAILURE_TEMPLATES) == len(truth_lines)
        for p in errors:
            if p.run_count <= len(p.run_ids):
                assert set(p.run_ids) in [truth_runs[m] for m in truth_runs]
    finally:
        await backend.close()


class _AnySource:
    """Hides the embedded store's type, so the facade takes the generic (Loki) path."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


async def test_indexed_and_generic_paths_agree(tmp_path: Path) -> None:
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    backend = await Backend.open(settings)
    try:
        now = time.time_ns()
        await run_fleet(backend.push, FleetOptions(backfill_s=2 * 3600, seed=4), clock=lambda: now)
        generic = Backend(
            settings,
            logs=_AnySource(backend.logs),  # type: ignore[arg-type]
            tasks=backend.tasks,
            cache=MemoryCache(),
            summarizer=backend.summarizer,
        )
        for window in ((now - 3600 * NS, now + NS), (now - 1800 * NS, now - 600 * NS)):
            fast = await backend.failure_patterns(*window)
            slow = await generic.failure_patterns(*window)

            def key(r: object) -> list[tuple[object, ...]]:
                return sorted(
                    (p.kind, p.template, p.count, p.run_count, p.new, p.previous_count, p.trend)
                    for p in r.patterns  # type: ignore[attr-defined]
                )

            assert key(fast) == key(slow)
            assert fast.error_rate == slow.error_rate
            assert all(p.samples for p in fast.patterns)
    finally:
        await backend.close()
