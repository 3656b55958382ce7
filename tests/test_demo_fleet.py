"""The simulated agent fleet: realistic, deterministic, fast, and pushed like a real pusher."""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from backend.demo.fleet import (
    AGENT_NAMES,
    KNOWN_FAILURE_TEMPLATES,
    FleetOptions,
    _agent_names,
    generate_backfill,
    run_fleet,
    template_regex,
)
from backend.errors import UsageError
from backend.models import PushResult, Stream

END = 1_714_500_000_000_000_000  # a fixed "now" in ns
NS = 1_000_000_000
PATTERNS = {name: template_regex(t) for name, t in KNOWN_FAILURE_TEMPLATES.items()}


@dataclass
class Line:
    ts: int
    labels: dict[str, str]
    text: str
    meta: dict[str, str]
    obj: dict[str, Any] | None  # parsed JSON, or None for logfmt / plain lines


@dataclass
class Corpus:
    batches: list[list[Stream]] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)

    def add(self, batch: list[Stream]) -> None:
        self.batches.append(batch)
        for s in batch:
            for e in s.entries:
                obj = None
                if e.line.startswith("{"):
                    obj = orjson.loads(e.line)
                self.lines.append(Line(e.ts, s.labels, e.line, e.metadata, obj))

    def runs(self) -> dict[str, list[Line]]:
        out: dict[str, list[Line]] = defaultdict(list)
        for ln in sorted(self.lines, key=lambda x: x.ts):
            out[ln.meta["run_id"]].append(ln)
        return out


def backfill(opts: FleetOptions, end: int = END) -> Corpus:
    c = Corpus()
    for batch in generate_backfill(opts, end):
        c.add(batch)
    return c


@pytest.fixture(scope="module")
def big() -> Corpus:
    # 3 hours of 8 agents at the default rate: ~2900 runs, ~40k lines
    return backfill(FleetOptions(backfill_s=3 * 3600, seed=42))


def events(lines: list[Line], event: str) -> list[dict[str, Any]]:
    return [ln.obj for ln in lines if ln.obj is not None and ln.obj.get("event") == event]


# ---------------------------------------------------------------- shape of the data


def test_agent_names() -> None:
    assert AGENT_NAMES[0] == "planner" and len(AGENT_NAMES) == 8
    assert _agent_names(3) == ["planner", "researcher", "coder"]
    names = _agent_names(20)
    assert len(set(names)) == 20 and names[8] == "planner-2"


def test_labels_metadata_and_batches(big: Corpus) -> None:
    streams = {tuple(sorted(ln.labels.items())) for ln in big.lines}
    assert 20 <= len(streams) <= 24
    for ln in big.lines[:5000]:
        assert set(ln.labels) == {"service_name", "agent", "level", "env"}
        assert ln.labels["service_name"] == "agentlog-demo" and ln.labels["env"] == "demo"
        assert ln.labels["level"] in ("info", "warn", "error")
        assert ln.meta["run_id"].startswith("run-") and len(ln.meta["run_id"]) == 16
        if ln.obj is not None:
            assert ln.obj["run_id"] == ln.meta["run_id"]
            assert ln.obj["agent"] == ln.labels["agent"]
            assert ln.obj["level"] == ln.labels["level"]
    assert all(sum(len(s.entries) for s in b) <= 1000 for b in big.batches)


def test_timestamps_increase_per_stream_and_stay_in_window(big: Corpus) -> None:
    last: dict[tuple[tuple[str, str], ...], int] = {}
    for ln in big.lines:  # in push order
        key = tuple(sorted(ln.labels.items()))
        assert ln.ts > last.get(key, 0)
        last[key] = ln.ts
        assert END - 3 * 3600 * NS <= ln.ts <= END


def test_runs_overlap_across_agents(big: Corpus) -> None:
    spans = []
    for lines in big.runs().values():
        spans.append((lines[0].ts, lines[-1].ts, lines[0].labels["agent"]))
    spans.sort()
    overlaps = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1] and b[2] != a[2])
    assert overlaps > len(spans) // 10


def test_run_lifecycle_and_outcome_mix(big: Corpus) -> None:
    runs = big.runs()
    assert len(runs) > 2000
    statuses: Counter[str] = Counter()
    stalled = 0
    for run_id, lines in runs.items():
        first = lines[0].obj
        assert first is not None and first["event"] == "run.start", run_id
        assert first["task"] and first["model"]
        ends = events(lines, "run.end")
        assert len(ends) <= 1
        if ends:
            assert ends[0]["status"] in ("succeeded", "failed", "timeout", "cancelled")
            assert ends[0]["duration_ms"] == pytest.approx(
                (lines[-1].ts - lines[0].ts) / 1e6, abs=2
            )
            statuses[ends[0]["status"]] += 1
        elif lines[0].ts < END - 10 * 60 * NS:  # not merely cut off by the window's end
            last = [ln.obj for ln in lines if ln.obj is not None][-1]
            assert last["event"] == "step", run_id  # went silent after a step
            stalled += 1
    total = sum(statuses.values()) + stalled
    assert 0.62 < statuses["succeeded"] / total < 0.78
    assert 0.15 < statuses["failed"] / total < 0.25
    assert 0.03 < statuses["timeout"] / total < 0.08
    assert statuses["cancelled"] > 0 and stalled > 0


def test_every_error_matches_a_known_template_and_every_mode_appears(big: Corpus) -> None:
    seen: Counter[str] = Counter()
    for ln in big.lines:
        if ln.obj is None or ln.obj.get("event") != "error":
            continue
        assert ln.labels["level"] == "error"
        msg = ln.obj["error.message"]
        matches = [name for name, rx in PATTERNS.items() if rx.match(msg)]
        assert len(matches) == 1, msg
        seen[matches[0]] += 1
        assert ln.obj["error.type"]
        if ln.obj["error.type"] in ("KeyError", "ValueError"):
            stack = ln.obj["error.stack"]
            assert stack.startswith("Traceback (most recent call last):\n")
            assert stack.count("\n") >= 4 and stack.endswith(msg)
    assert set(seen) == set(KNOWN_FAILURE_TEMPLATES)


def test_retry_storm_loop_and_messy_lines_appear(big: Corpus) -> None:
    storms = loops = 0
    for lines in big.runs().values():
        errs = [ln for ln in lines if ln.obj is not None and ln.obj.get("event") == "error"]
        if len(errs) >= 15 and errs[-1].ts - errs[0].ts < 10 * NS:
            storms += 1
        calls = Counter(
            (o["tool"], orjson.dumps(o["args"], option=orjson.OPT_SORT_KEYS))
            for o in events(lines, "tool.call")
        )
        if calls and max(calls.values()) >= 6:
            loops += 1
    assert storms >= 5 and loops >= 5
    plain = [ln for ln in big.lines if ln.obj is None]
    logfmt = [ln for ln in plain if ln.text.startswith("ts=") and " run_id=" in ln.text]
    assert logfmt and len(plain) > len(logfmt)
    llm = events(big.lines, "llm.call")
    assert llm and all(o["cost_usd"] > 0 and o["input_tokens"] > 0 for o in llm[:500])
    assert {o["model"] for o in llm} >= {"anthropic/claude-3-haiku", "openai/gpt-4o-mini"}
    tools = events(big.lines, "tool.call")
    assert all(isinstance(o["args"], dict) and o["tool"] for o in tools[:500])


# ---------------------------------------------------------------- determinism


def test_same_seed_same_lines_relative_to_end() -> None:
    opts = FleetOptions(backfill_s=1800, seed=7, agents=4)
    a = backfill(opts)
    b = backfill(opts)
    assert [(x.ts, x.text) for x in a.lines] == [(y.ts, y.text) for y in b.lines]
    shift = 3_600 * NS + 123_456_789
    c = backfill(opts, END + shift)
    assert [x.ts - END for x in a.lines] == [y.ts - END - shift for y in c.lines]
    strip = [{k: v for k, v in (x.obj or {}).items() if k != "ts"} for x in a.lines]
    assert strip == [{k: v for k, v in (y.obj or {}).items() if k != "ts"} for y in c.lines]
    d = backfill(FleetOptions(backfill_s=1800, seed=8, agents=4))
    assert [x.text for x in a.lines] != [y.text for y in d.lines]


def test_invalid_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="agents"):
        list(generate_backfill(FleetOptions(agents=0, backfill_s=60), END))
    with pytest.raises(UsageError, match="rate"):
        list(generate_backfill(FleetOptions(rate=0, backfill_s=60), END))


# ---------------------------------------------------------------- run_fleet


class FakeTime:
    """A clock that only moves when the fleet sleeps."""

    def __init__(self, start: int = END) -> None:
        self.now = start
        self.sleeps = 0

    def clock(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += int(seconds * NS)


async def test_live_stops_after_n_runs() -> None:
    ft = FakeTime()
    corpus = Corpus()
    progress: list[tuple[int, int | None]] = []

    async def push(batch: list[Stream]) -> PushResult:
        corpus.add(batch)
        return PushResult(accepted=sum(len(s.entries) for s in batch))

    opts = FleetOptions(agents=3, runs=6, seed=5, speed=20)
    report = await run_fleet(
        push, opts, clock=ft.clock, sleep=ft.sleep, progress=lambda a, b: progress.append((a, b))
    )
    runs = corpus.runs()
    assert report.runs == len(runs) == 6
    assert report.lines == len(corpus.lines) > 6 * 4
    assert report.streams <= 9 and report.seconds == pytest.approx((ft.now - END) / NS)
    assert ft.sleeps >= 3  # it did progress in real (fake) time, in small pushes
    assert len(corpus.batches) >= 3
    assert all(END <= ln.ts <= ft.now for ln in corpus.lines)
    for lines in runs.values():  # all lines are out: a run without run.end went silent
        if not events(lines, "run.end"):
            last = [ln.obj for ln in lines if ln.obj is not None][-1]
            assert last["event"] == "step"
    assert progress[-1] == (6, 6)
    agents = {lines[0].labels["agent"] for lines in runs.values()}
    assert len(agents) >= 2


async def test_live_duration_bound_and_speed() -> None:
    ft = FakeTime()
    corpus = Corpus()

    async def push(batch: list[Stream]) -> PushResult:
        corpus.add(batch)
        return PushResult()

    # 60 wall seconds at 10x: 600 simulated seconds, ~20 runs per agent
    report = await run_fleet(
        push,
        FleetOptions(agents=2, duration_s=60, speed=10, seed=1),
        clock=ft.clock,
        sleep=ft.sleep,
    )
    assert report.seconds == pytest.approx(60, abs=0.5)
    assert all(ln.ts <= END + 60 * NS for ln in corpus.lines)
    assert 20 <= report.runs <= 70


async def test_backfill_only_then_backfill_and_live() -> None:
    ft = FakeTime()
    corpus = Corpus()
    progress: list[tuple[int, int | None]] = []

    async def push(batch: list[Stream]) -> PushResult:
        corpus.add(batch)
        return PushResult()

    opts = FleetOptions(agents=4, backfill_s=1800, seed=3, batch_size=200)
    report = await run_fleet(
        push, opts, clock=ft.clock, sleep=ft.sleep, progress=lambda a, b: progress.append((a, b))
    )
    assert ft.sleeps == 0  # backfill never sleeps
    reference = backfill(opts)
    assert [x.text for x in corpus.lines] == [x.text for x in reference.lines]
    assert report.lines == len(reference.lines) and report.runs == len(reference.runs())
    assert progress[-1][0] == progress[-1][1] == report.runs  # exact total for a backfill
    assert all(sum(len(s.entries) for s in b) <= 200 for b in corpus.batches)

    # backfill, then live: runs in flight at "now" get finished by the live phase
    ft2, live = FakeTime(), Corpus()

    async def push2(batch: list[Stream]) -> PushResult:
        live.add(batch)
        return PushResult()

    opts2 = FleetOptions(agents=4, backfill_s=1800, duration_s=600, seed=3)
    await run_fleet(push2, opts2, clock=ft2.clock, sleep=ft2.sleep)
    cut = {rid for rid, lines in reference.runs().items() if not events(lines, "run.end")}
    finished_later = [
        rid for rid, lines in live.runs().items() if rid in cut and events(lines, "run.end")
    ]
    assert finished_later


def test_generation_speed() -> None:
    opts = FleetOptions(backfill_s=6 * 3600, seed=9)
    t0 = time.perf_counter()
    n = sum(len(s.entries) for batch in generate_backfill(opts, END) for s in batch)
    dt = time.perf_counter() - t0
    rate = n / dt
    print(f"\ndemo fleet backfill: {n} lines in {dt:.2f}s = {rate:,.0f} lines/s")
    assert n > 50_000
    assert rate > 50_000  # ~250k/s on the dev machine; lenient for a loaded CI box
