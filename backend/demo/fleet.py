"""A simulated fleet of AI agents that writes realistic agent logs through a push callable.

The demo fleet goes through the same push path a real pusher uses (`PushFn`, e.g. the embedded
store's `push`), so everything downstream (task table, tail, patterns, summaries) sees what it
would see from a real fleet: JSON lines following the data contract in DESIGN.md, overlapping
runs across agents, every failure mode the dashboard is meant to surface, and a little mess
(plain-text and logfmt lines).

Streams are `{service_name, agent, level, env}`; the high-cardinality `run_id` is in the line and
in each entry's structured metadata, never a label (8 agents x 3 levels = 24 streams at most).

Two modes:

- backfill (`backfill_s`): history over `[now - backfill_s, now]`, generated as fast as possible
  (no sleeping). Runs still in flight at `now` are cut there (they look "running").
- live: runs start and progress in real time compressed by `speed`; lines are pushed in small
  batches every ~200 ms. Stops after `duration_s`, or once `runs` runs have started and all
  their lines are out. With neither bound it runs until cancelled.

`run_fleet` with `backfill_s` alone does the backfill and returns; with `backfill_s` and
`duration_s` it backfills and then goes live, carrying on the runs that were in flight.

Everything is drawn from RNGs derived from the seed, in a fixed order, so a seed reproduces
the same lines; for a backfill, timestamps are identical relative to `end_ns`. In live mode
timestamps are wall-clock: with `speed` 10 a run that would take 60 s takes 6 s, and its
`duration_ms` says 6000 (consistent with the timestamps).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import UsageError
from ..models import Labels, LogEntry, PushResult, Stream

__all__ = [
    "AGENT_NAMES",
    "ENV",
    "KNOWN_FAILURE_TEMPLATES",
    "LEVELS",
    "SERVICE_NAME",
    "FleetOptions",
    "FleetReport",
    "PushFn",
    "generate_backfill",
    "run_fleet",
    "template_regex",
]

PushFn = Callable[[list[Stream]], Awaitable[PushResult]]
ProgressFn = Callable[[int, int | None], None]

SERVICE_NAME = "agentlog-demo"
ENV = "demo"
LEVELS = ("info", "warn", "error")
AGENT_NAMES: tuple[str, ...] = (
    "planner",
    "researcher",
    "coder",
    "reviewer",
    "retriever",
    "browser",
    "summarizer",
    "support",
)

# Every `error.message` the fleet writes matches exactly one of these (`<*>` = a variable part).
KNOWN_FAILURE_TEMPLATES: dict[str, str] = {
    "tool_timeout": "tool <*> timed out after <*>s",
    "rate_limited": "rate limited by provider <*>: HTTP 429, retry after <*>s",
    "provider_unavailable": "provider <*> returned HTTP 503: service unavailable",
    "retries_exhausted": "giving up after <*> retries: provider <*> unavailable",
    "json_decode": "JSONDecodeError: Expecting value: line <*> column <*> (char <*>)",
    "tool_key_error": "KeyError: <*>",
    "tool_value_error": "ValueError: invalid literal for int() with base 10: <*>",
    "context_length": "context length exceeded: <*> tokens > <*> limit for model <*>",
    "loop_detected": "loop detected: tool <*> called <*> times with identical arguments",
}


def template_regex(template: str) -> re.Pattern[str]:
    """The full-match regex of a template: literal text, `<*>` = one or more characters."""
    return re.compile("^" + ".+?".join(re.escape(p) for p in template.split("<*>")) + "$", re.S)


@dataclass
class FleetOptions:
    agents: int = 8
    runs: int | None = None  # total runs started (backfill + live); None = unbounded
    rate: float = 2.0  # runs started per minute per agent
    duration_s: float | None = None  # live duration (after any backfill)
    backfill_s: float | None = None  # write history ending now, fast, no sleeping
    seed: int | None = None  # None = a fresh random seed
    batch_size: int = 1000  # entries per push at most
    speed: float = 1.0  # live time compression: 10 = ten times faster than real time


@dataclass
class FleetReport:
    lines: int  # entries pushed
    runs: int  # runs whose run.start was pushed
    failed: int  # runs that failed, timed out or stalled (their last line was pushed)
    seconds: float  # wall time of the call
    streams: int  # distinct streams written


# ---------------------------------------------------------------- the fleet's vocabulary


@dataclass(frozen=True, slots=True)
class _Model:
    name: str
    provider: str
    price_in: float  # USD per input token
    price_out: float  # USD per output token
    context: int  # tokens
    # OpenRouter routes one model to several upstream providers; an error names the one it hit.
    upstreams: tuple[str, ...] = ()


_ANTHROPIC = ("anthropic", "amazon-bedrock", "google-vertex")
_OPENAI = ("openai", "azure")
_LLAMA = ("together", "fireworks", "deepinfra", "lambda")
_GOOGLE = ("google-ai-studio", "google-vertex")

_MODELS = {
    m.name: m
    for m in (
        _Model("anthropic/claude-3-haiku", "anthropic", 0.25e-6, 1.25e-6, 200_000, _ANTHROPIC),
        _Model("anthropic/claude-3.5-sonnet", "anthropic", 3e-6, 15e-6, 200_000, _ANTHROPIC),
        _Model("openai/gpt-4o-mini", "openai", 0.15e-6, 0.6e-6, 128_000, _OPENAI),
        _Model("openai/gpt-4o", "openai", 2.5e-6, 10e-6, 128_000, _OPENAI),
        _Model("meta-llama/llama-3.1-70b-instruct", "together", 0.52e-6, 0.75e-6, 131_072, _LLAMA),
        _Model("google/gemini-flash-1.5", "google", 0.075e-6, 0.3e-6, 1_000_000, _GOOGLE),
    )
}

_TEAMS = ("payments", "search", "growth", "infra", "mobile", "data")
_TOPICS = (
    "vector databases",
    "EU AI Act obligations",
    "LLM eval harnesses",
    "SOC 2 evidence",
    "GPU spot pricing",
    "retrieval reranking",
)
_COMPANIES = ("Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries")
_DOMAINS = ("shop.example.com", "docs.example.org", "status.example.net", "pricing.example.io")
_MODULES = ("billing/invoice.py", "auth/session.py", "search/rank.py", "api/routes.py")
_QUERIES = (
    "refund policy for annual plans",
    "how to rotate API keys",
    "latency regression after deploy",
    "error budget for checkout",
    "pricing tiers comparison",
    "reset two-factor authentication",
)
_SELECTORS = ("#checkout", "button.submit", "div.price > span", "a[href='/login']", "#search-box")
_KEYS = ("'customer_id'", "'choices'", "'content'", "'items'", "'url'", "'next_cursor'")
_BAD_INTS = ("'N/A'", "''", "'12.5'", "'none'", "'1,024'")

Rng = random.Random
Args = dict[str, Any]


def _pick(rng: Rng, seq: tuple[str, ...]) -> str:
    return seq[int(rng.random() * len(seq))]


def _num(rng: Rng, lo: int, hi: int) -> int:
    """Uniform int in [lo, hi] (faster than randint, and just as deterministic)."""
    return lo + int(rng.random() * (hi - lo + 1))


_TASKS: dict[str, tuple[Callable[[Rng], str], ...]] = {
    "planner": (
        lambda r: f"plan sprint {_num(r, 20, 90)} for team {_pick(r, _TEAMS)}",
        lambda r: f"break down epic EPIC-{_num(r, 100, 999)}",
        lambda r: f"schedule migration batch {_num(r, 1, 60)}",
    ),
    "researcher": (
        lambda r: f"research {_pick(r, _TOPICS)}",
        lambda r: f"compare pricing of {_pick(r, _COMPANIES)}",
    ),
    "coder": (
        lambda r: f"fix issue #{_num(r, 1000, 9999)}",
        lambda r: f"implement FEAT-{_num(r, 100, 999)}",
        lambda r: f"refactor {_pick(r, _MODULES)}",
    ),
    "reviewer": (
        lambda r: f"review PR {_num(r, 1000, 4999)}",
        lambda r: f"check test coverage of PR {_num(r, 1000, 4999)}",
    ),
    "retriever": (
        lambda r: f"index docs batch {_num(r, 1, 400)}",
        lambda r: f"answer KB query #{_num(r, 10000, 99999)}",
    ),
    "browser": (
        lambda r: f"scrape pricing from {_pick(r, _DOMAINS)}",
        lambda r: f"fill signup form on {_pick(r, _DOMAINS)}",
    ),
    "summarizer": (
        lambda r: f"summarize PR {_num(r, 1000, 4999)}",
        lambda r: f"digest #{_pick(r, _TEAMS)} channel for {_num(r, 1, 28)} Mar",
    ),
    "support": (
        lambda r: f"triage ticket #{_num(r, 1000, 9999)}",
        lambda r: f"draft reply to ticket #{_num(r, 1000, 9999)}",
    ),
}

_ToolSpec = tuple[str, Callable[[Rng], Args]]

_TOOLS: dict[str, tuple[_ToolSpec, ...]] = {
    "planner": (
        ("list_issues", lambda r: {"team": _pick(r, _TEAMS), "state": "open", "limit": 50}),
        (
            "create_subtask",
            lambda r: {"parent": f"EPIC-{_num(r, 100, 999)}", "points": _num(r, 1, 8)},
        ),
        ("estimate_effort", lambda r: {"issue": f"#{_num(r, 1000, 9999)}"}),
    ),
    "researcher": (
        ("web_search", lambda r: {"query": _pick(r, _TOPICS), "max_results": 5}),
        ("fetch_url", lambda r: {"url": f"https://{_pick(r, _DOMAINS)}/p/{_num(r, 1, 99)}"}),
    ),
    "coder": (
        ("read_file", lambda r: {"path": f"src/{_pick(r, _MODULES)}"}),
        ("run_tests", lambda r: {"target": f"tests/test_{_num(r, 1, 40)}.py", "timeout": 120}),
        ("apply_patch", lambda r: {"path": f"src/{_pick(r, _MODULES)}", "hunks": _num(r, 1, 6)}),
    ),
    "reviewer": (
        ("get_diff", lambda r: {"pr": _num(r, 1000, 4999)}),
        ("post_comment", lambda r: {"pr": _num(r, 1000, 4999), "line": _num(r, 1, 400)}),
    ),
    "retriever": (
        ("vector_search", lambda r: {"index": "kb-prod", "k": 8, "query": _pick(r, _QUERIES)}),
        ("embed_chunks", lambda r: {"count": _num(r, 16, 512), "model": "text-embedding-3-small"}),
    ),
    "browser": (
        ("navigate", lambda r: {"url": f"https://{_pick(r, _DOMAINS)}/"}),
        ("click", lambda r: {"selector": _pick(r, _SELECTORS)}),
        ("extract_text", lambda r: {"selector": _pick(r, _SELECTORS)}),
    ),
    "summarizer": (
        ("get_diff", lambda r: {"pr": _num(r, 1000, 4999)}),
        ("fetch_thread", lambda r: {"channel": _pick(r, _TEAMS), "limit": 200}),
    ),
    "support": (
        ("lookup_customer", lambda r: {"customer_id": f"cus_{r.getrandbits(40):010x}"}),
        ("search_kb", lambda r: {"query": _pick(r, _QUERIES)}),
        ("send_reply", lambda r: {"ticket": _num(r, 1000, 9999), "draft": True}),
    ),
}

_AGENT_MODELS: dict[str, tuple[str, str]] = {  # (primary, fallback)
    "planner": ("anthropic/claude-3.5-sonnet", "openai/gpt-4o"),
    "researcher": ("anthropic/claude-3-haiku", "google/gemini-flash-1.5"),
    "coder": ("openai/gpt-4o", "anthropic/claude-3.5-sonnet"),
    "reviewer": ("anthropic/claude-3.5-sonnet", "openai/gpt-4o-mini"),
    "retriever": ("openai/gpt-4o-mini", "anthropic/claude-3-haiku"),
    "browser": ("openai/gpt-4o-mini", "meta-llama/llama-3.1-70b-instruct"),
    "summarizer": ("anthropic/claude-3-haiku", "openai/gpt-4o-mini"),
    "support": ("openai/gpt-4o-mini", "anthropic/claude-3-haiku"),
}

_STEP_MSGS = (
    "planning next action",
    "reading context",
    "choosing a tool",
    "checking intermediate result",
    "drafting answer",
    "validating output",
    "updating scratchpad",
)

_INFO, _WARN, _ERROR = 0, 1, 2

# Outcome of a run, with its share: roughly 70% succeed, 20% fail, 5% time out.
_SUCCEEDED, _FAILED, _TIMEOUT, _CANCELLED, _STALLED = range(5)
_OUTCOME_CUTS = ((0.70, _SUCCEEDED), (0.90, _FAILED), (0.95, _TIMEOUT), (0.98, _CANCELLED))
# How a failed run fails (cumulative shares).
_MODE_CUTS = (
    (0.20, "json_decode"),
    (0.45, "tool_exception"),
    (0.60, "context_length"),
    (0.75, "rate_limited"),
    (0.85, "retry_storm"),
)  # else: loop

# Tags on emitted entries, for the report's counters.
_TAG_START = 1
_TAG_FAIL = 2

_NS = 1_000_000_000


def _iso(ns: int) -> str:
    sec, rem = divmod(ns, _NS)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{rem // 1000:06d}Z"


def _dumps(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


# Event in the merge heap: (ts, seq, stream index, line, run_id, tag). seq breaks ties so the
# order never depends on comparing lines.
_Event = tuple[int, int, int, str, str, int]


class _Fleet:
    """Run scheduler + generator + time-ordered merger; shared by backfill and live."""

    def __init__(self, opts: FleetOptions, origin_ns: int, scale: float) -> None:
        _validate(opts)
        self.opts = opts
        seed = opts.seed if opts.seed is not None else random.SystemRandom().getrandbits(64)
        self.rng = random.Random(seed)
        self.scale = scale  # wall seconds per simulated second
        self.names = _agent_names(opts.agents)
        self.labels: list[Labels] = [
            {"service_name": SERVICE_NAME, "agent": name, "level": lvl, "env": ENV}
            for name in self.names
            for lvl in LEVELS
        ]
        self.mean_gap_s = 60.0 / opts.rate
        # Each agent's arrivals come from its own RNG, so counting them ahead (for progress)
        # does not disturb the content RNG.
        self.sched_rngs = [random.Random(seed * 1_000_003 + i + 1) for i in range(opts.agents)]
        self.next_start: list[tuple[int, int]] = []
        for i, srng in enumerate(self.sched_rngs):
            first = origin_ns + int(srng.random() * self.mean_gap_s * _NS * scale)
            self.next_start.append((first, i))
        heapq.heapify(self.next_start)
        self.started = 0
        self.events: list[_Event] = []
        self.seq = 0
        self.last_ts = [0] * len(self.labels)
        # the batch being filled
        self.batch: dict[int, Stream] = {}
        self.batch_n = 0
        # counters over emitted entries
        self.lines = 0
        self.runs = 0
        self.failed = 0
        self.streams_seen: set[int] = set()

    # ------------------------------------------------------------ scheduling

    @property
    def cap_reached(self) -> bool:
        return self.opts.runs is not None and self.started >= self.opts.runs

    def peek_start(self) -> int | None:
        if self.cap_reached:
            return None
        return self.next_start[0][0]

    def count_starts_until(self, end_ns: int) -> int:
        """How many runs would start at or before `end_ns` (capped by `runs`); no side effects."""
        total = 0
        for start, i in self.next_start:
            srng = random.Random()
            srng.setstate(self.sched_rngs[i].getstate())
            t = start
            while t <= end_ns:
                total += 1
                t += self._gap(srng)
        return total if self.opts.runs is None else min(total, self.opts.runs)

    def _gap(self, srng: Rng) -> int:
        # exponential inter-arrival times: a Poisson stream of runs per agent
        return 1 + int(-math.log(1.0 - srng.random()) * self.mean_gap_s * _NS * self.scale)

    def start_next(self) -> None:
        start, i = self.next_start[0]
        heapq.heapreplace(self.next_start, (start + self._gap(self.sched_rngs[i]), i))
        self.started += 1
        self._run(i, start)

    def start_until(self, now_ns: int) -> None:
        while (s := self.peek_start()) is not None and s <= now_ns:
            self.start_next()

    # ------------------------------------------------------------ emitting

    def drain(self, until_ns: int) -> Iterator[list[Stream]]:
        """Move events with ts <= until_ns into batches; yield each batch as it fills."""
        events = self.events
        pop = heapq.heappop
        last_ts = self.last_ts
        bsize = self.opts.batch_size
        while events and events[0][0] <= until_ns:
            ts, _, sidx, line, run_id, tag = pop(events)
            if ts <= last_ts[sidx]:  # keep per-stream timestamps strictly increasing
                ts = last_ts[sidx] + 1
            last_ts[sidx] = ts
            stream = self.batch.get(sidx)
            if stream is None:
                stream = self.batch[sidx] = Stream(dict(self.labels[sidx]), [])
                self.streams_seen.add(sidx)
            stream.entries.append(LogEntry(ts, line, {"run_id": run_id}))
            self.lines += 1
            if tag:
                if tag & _TAG_START:
                    self.runs += 1
                if tag & _TAG_FAIL:
                    self.failed += 1
            self.batch_n += 1
            if self.batch_n >= bsize:
                out = self.flush()
                if out:
                    yield out

    def flush(self) -> list[Stream]:
        out = list(self.batch.values())
        self.batch = {}
        self.batch_n = 0
        return out

    def backfill(self, end_ns: int) -> Iterator[list[Stream]]:
        """History up to `end_ns`, in full batches (call `flush` after for the remainder)."""
        while (s := self.peek_start()) is not None and s <= end_ns:
            # nothing generated later can be older than the next run's start
            yield from self.drain(s - 1)
            self.start_next()
        yield from self.drain(end_ns)

    # ------------------------------------------------------------ one run

    def _run(self, agent_idx: int, start: int) -> None:
        run = _RunBuilder(self.rng, self.names[agent_idx], start, self.scale)
        run.play()
        sbase = agent_idx * 3
        push = heapq.heappush
        events = self.events
        seq = self.seq
        for ts, level, line, tag in run.out:
            seq += 1
            push(events, (ts, seq, sbase + level, line, run.run_id, tag))
        self.seq = seq


class _RunBuilder:
    """Writes the lines of one run, in time order, into `out` as (ts, level, line, tag).

    The RNG is consumed in a fixed order, so the same seed writes the same run.
    """

    def __init__(self, rng: Rng, agent: str, start: int, scale: float) -> None:
        self.rng = rng
        self.rnd = rng.random
        self.agent = agent
        self.base = agent.split("-", 1)[0]
        self.start = start
        self.t = start
        self.ns_per_s = scale * _NS  # wall ns per simulated second
        self.run_id = f"run-{rng.getrandbits(48):012x}"
        tasks = _TASKS[self.base]
        self.task = tasks[int(self.rnd() * len(tasks))](rng)
        primary, fallback = _AGENT_MODELS[self.base]
        self.model = _MODELS[primary if self.rnd() < 0.8 else fallback]
        self.tools = _TOOLS[self.base]
        self.out: list[tuple[int, int, str, int]] = []
        self.in_tokens = _num(rng, 600, 2000)

    # ------------------------------------------------------------ primitives

    def wait(self, lo: float, hi: float) -> float:
        """Advance the clock by a uniform lo..hi simulated seconds; returns the seconds."""
        s = lo + self.rnd() * (hi - lo)
        self.t += int(s * self.ns_per_s)
        return s

    def head(self, level: str, event: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {"ts": _iso(self.t), "level": level}
        if event:
            d["event"] = event
        d["agent"] = self.agent
        d["run_id"] = self.run_id
        d["task"] = self.task
        return d

    def emit(self, level: int, obj: dict[str, Any], tag: int = 0) -> None:
        self.out.append((self.t, level, _dumps(obj), tag))

    def emit_raw(self, level: int, line: str) -> None:
        self.out.append((self.t, level, line, 0))

    def step_line(self, step: int, msg: str | None = None) -> None:
        d = self.head("info", "step")
        d["step"] = step
        d["msg"] = msg or _STEP_MSGS[int(self.rnd() * len(_STEP_MSGS))]
        self.emit(_INFO, d)

    def error(self, step: int, etype: str, message: str, **extra: Any) -> None:
        d = self.head("error", "error")
        d["step"] = step
        d["error.type"] = etype
        d["error.message"] = message
        d.update(extra)
        d["msg"] = f"{etype} in step {step}"
        self.emit(_ERROR, d)

    def end(self, status: str, steps: int, msg: str, level: int, tag: int = 0) -> None:
        d = self.head(LEVELS[level], "run.end")
        d["status"] = status
        d["duration_ms"] = (self.t - self.start) // 1_000_000
        d["steps"] = steps
        d["msg"] = msg
        self.emit(level, d, tag)

    def llm_call(self, step: int) -> None:
        m = self.model
        self.in_tokens += _num(self.rng, 200, 1800)
        out_tokens = _num(self.rng, 40, 900)
        latency = self.wait(0.4, 6.0)
        d = self.head("info", "llm.call")
        d["step"] = step
        d["model"] = m.name
        d["input_tokens"] = self.in_tokens
        d["output_tokens"] = out_tokens
        d["cost_usd"] = round(self.in_tokens * m.price_in + out_tokens * m.price_out, 6)
        d["latency_ms"] = int(latency * 1000)
        d["msg"] = f"{m.name} answered"
        self.emit(_INFO, d)

    def pick_tool(self) -> tuple[str, Args]:
        name, make_args = self.tools[int(self.rnd() * len(self.tools))]
        return name, make_args(self.rng)

    def tool_call(self, step: int, tool: str, args: Args) -> None:
        latency = self.wait(0.05, 3.0)
        d = self.head("info", "tool.call")
        d["step"] = step
        d["tool"] = tool
        d["args"] = args
        d["latency_ms"] = int(latency * 1000)
        d["msg"] = f"called {tool}"
        self.emit(_INFO, d)

    def upstream(self) -> str:
        """The upstream provider OpenRouter routed this call to."""
        ups = self.model.upstreams or (self.model.provider,)
        return ups[0] if len(ups) == 1 else _pick(self.rng, ups)

    def rate_limited(self, step: int, attempt: int, tries: int, retry: bool) -> None:
        self.wait(0.2, 1.5)
        after = _num(self.rng, 2, 30)
        p = self.upstream()
        msg = f"rate limited by provider {p}: HTTP 429, retry after {after}s"
        self.error(step, "RateLimitError", msg, http_status=429, model=self.model.name)
        if retry:
            d = self.head("warn", None)
            d["msg"] = f"retrying in {after}s (attempt {attempt + 1}/{tries + 1})"
            self.emit(_WARN, d)
            self.t += int(after * self.ns_per_s)

    def messy_line(self) -> None:
        """Real fleets are messy: a stray logfmt or plain-text line (still tagged by run_id)."""
        rng, u = self.rng, self.rnd()
        self.wait(0.001, 0.05)
        if u < 0.4:
            hit = "true" if self.rnd() < 0.6 else "false"
            self.emit_raw(
                _INFO,
                f"ts={_iso(self.t)} level=info agent={self.agent} run_id={self.run_id}"
                f' msg="cache lookup" cache=embeddings hit={hit} latency_ms={_num(rng, 1, 40)}',
            )
        elif u < 0.7:
            self.emit_raw(
                _WARN,
                "WARNING urllib3.connectionpool: Connection pool is full, discarding connection:"
                f" {_pick(rng, _DOMAINS)}. Connection pool size: 10",
            )
        else:
            wait = _num(rng, 1, 9)
            self.emit_raw(_INFO, f"Retrying request to /chat/completions in 0.{wait} seconds")

    # ------------------------------------------------------------ failure modes

    def retry_storm(self, step: int) -> None:
        """Many 429/503 answers within seconds (no backoff), then giving up."""
        p = self.upstream()
        n = _num(self.rng, 15, 40)
        for _ in range(n):
            self.wait(0.02, 0.15)
            if self.rnd() < 0.6:
                msg = f"rate limited by provider {p}: HTTP 429, retry after {_num(self.rng, 1, 5)}s"
                self.error(step, "RateLimitError", msg, http_status=429, model=self.model.name)
            else:
                msg = f"provider {p} returned HTTP 503: service unavailable"
                self.error(step, "ServiceUnavailableError", msg, http_status=503)
        self.wait(0.01, 0.1)
        self.error(step, "RetryError", f"giving up after {n} retries: provider {p} unavailable")

    def tool_exception(self, step: int, tool: str) -> None:
        rng = self.rng
        if self.rnd() < 0.5:
            etype, key = "KeyError", _pick(rng, _KEYS)
            message = f"KeyError: {key}"
            code = f"return payload[{key}]"
        else:
            etype, bad = "ValueError", _pick(rng, _BAD_INTS)
            message = f"ValueError: invalid literal for int() with base 10: {bad}"
            code = "count = int(row['quantity'])"
        stack = (
            "Traceback (most recent call last):\n"
            f'  File "/app/agentkit/tools/runner.py", line {_num(rng, 100, 180)}, in invoke\n'
            "    result = await tool.run(**args)\n"
            f'  File "/app/agents/{self.base}/tools/{tool}.py", line {_num(rng, 20, 300)},'
            " in run\n"
            f"    {code}\n"
            f"{message}"
        )
        self.error(step, etype, message, tool=tool, **{"error.stack": stack})

    # ------------------------------------------------------------ the run

    def play(self) -> None:
        rng, rnd = self.rng, self.rnd
        u = rnd()
        outcome = _STALLED
        for cut, oc in _OUTCOME_CUTS:
            if u < cut:
                outcome = oc
                break
        mode = ""
        if outcome == _FAILED:
            u = rnd()
            mode = "loop"
            for cut, name in _MODE_CUTS:
                if u < cut:
                    mode = name
                    break
        elif outcome == _TIMEOUT:
            mode = "tool_timeout"
        nsteps = _num(rng, 3, 10)
        stop_at = _num(rng, 1, nsteps) if outcome != _SUCCEEDED else 0
        transient_429_at = _num(rng, 1, nsteps) if outcome == _SUCCEEDED and rnd() < 0.08 else 0
        messy_at = 2 if rnd() < 0.12 else 0

        d = self.head("info", "run.start")
        d["model"] = self.model.name
        d["msg"] = f"starting: {self.task}"
        self.emit(_INFO, d, _TAG_START)

        step = 0
        while step < nsteps:
            step += 1
            self.wait(0.2, 2.5)
            self.step_line(step)
            if step == messy_at:
                self.messy_line()

            if step != stop_at:
                if step == transient_429_at:  # a 429 the run recovers from
                    self.rate_limited(step, 1, 1, retry=True)
                    self.llm_call(step)
                elif rnd() < 0.5:
                    self.llm_call(step)
                else:
                    self.tool_call(step, *self.pick_tool())
                continue

            # this step is where the run goes wrong
            if outcome == _STALLED:
                # silence from here on: no run.end ever; its last line carries the failure tag
                ts, level, line, _ = self.out[-1]
                self.out[-1] = (ts, level, line, _TAG_FAIL)
                return
            if outcome == _CANCELLED:
                self.wait(0.5, 5.0)
                self.end("cancelled", step, "cancelled by operator", _WARN)
                return
            if mode == "context_length":
                self.in_tokens += _num(rng, 200, 1800)
                self.wait(0.05, 0.3)
                m = self.model
                over = m.context + _num(rng, 1, 40_000)
                msg = (
                    f"context length exceeded: {over} tokens > {m.context} limit for model {m.name}"
                )
                self.error(step, "ContextLengthExceeded", msg, model=m.name)
            elif mode == "rate_limited":
                tries = _num(rng, 2, 4)
                for attempt in range(1, tries + 1):
                    self.rate_limited(step, attempt, tries, retry=attempt < tries)
            elif mode == "retry_storm":
                self.retry_storm(step)
            else:
                tool, args = self.pick_tool()
                if mode == "tool_timeout":
                    limit = (30, 60, 120)[int(rnd() * 3)]
                    self.t += int(limit * self.ns_per_s)
                    msg = f"tool {tool} timed out after {limit}s"
                    self.error(step, "TimeoutError", msg, tool=tool)
                elif mode == "loop":
                    repeats = _num(rng, 6, 12)
                    for rep in range(repeats):
                        if rep:
                            step += 1
                            self.wait(0.1, 0.8)
                            self.step_line(step, "choosing a tool")
                        self.tool_call(step, tool, args)
                    self.wait(0.01, 0.2)
                    msg = (
                        f"loop detected: tool {tool} called {repeats} times"
                        " with identical arguments"
                    )
                    self.error(step, "LoopDetected", msg, tool=tool)
                else:
                    self.tool_call(step, tool, args)
                    self.wait(0.01, 0.2)
                    if mode == "json_decode":
                        ln, col = _num(rng, 1, 40), _num(rng, 1, 120)
                        char = 0 if ln == 1 and col == 1 else _num(rng, col, col + 4000)
                        msg = (
                            "JSONDecodeError: Expecting value:"
                            f" line {ln} column {col} (char {char})"
                        )
                        self.error(step, "JSONDecodeError", msg, tool=tool)
                    else:
                        self.tool_exception(step, tool)
            break

        self.wait(0.05, 0.5)
        if outcome == _SUCCEEDED:
            self.end("succeeded", step, "task completed", _INFO)
        else:
            status = "timeout" if outcome == _TIMEOUT else "failed"
            self.end(status, step, f"run {status}", _ERROR, _TAG_FAIL)


def _agent_names(n: int) -> list[str]:
    """planner, researcher, ... then planner-2, researcher-2, ... beyond the eight names."""
    k = len(AGENT_NAMES)
    return [AGENT_NAMES[i % k] if i < k else f"{AGENT_NAMES[i % k]}-{i // k + 1}" for i in range(n)]


def _validate(opts: FleetOptions) -> None:
    if opts.agents < 1:
        raise UsageError(f"demo fleet: agents must be at least 1, got {opts.agents}")
    if not opts.rate > 0:
        raise UsageError(
            f"demo fleet: rate (runs per minute per agent) must be > 0, got {opts.rate}"
        )
    if not opts.speed > 0:
        raise UsageError(f"demo fleet: speed must be > 0, got {opts.speed}")
    if opts.batch_size < 1:
        raise UsageError(f"demo fleet: batch_size must be at least 1, got {opts.batch_size}")
    if opts.runs is not None and opts.runs < 0:
        raise UsageError(f"demo fleet: runs must be >= 0, got {opts.runs}")
    if opts.backfill_s is not None and opts.backfill_s < 0:
        raise UsageError(f"demo fleet: backfill_s must be >= 0, got {opts.backfill_s}")
    if opts.duration_s is not None and opts.duration_s < 0:
        raise UsageError(f"demo fleet: duration_s must be >= 0, got {opts.duration_s}")


# ---------------------------------------------------------------- public entry points

_TICK_S = 0.2  # live mode pushes at most this often (wall seconds)


def generate_backfill(opts: FleetOptions, end_ns: int) -> Iterator[list[Stream]]:
    """History over `[end_ns - backfill_s, end_ns]` as push batches (<= batch_size entries each).

    Pure and fast: no sleeping, no I/O. Runs in flight at `end_ns` are cut there. With the same
    seed, the lines and the timestamps relative to `end_ns` are identical.
    """
    span_ns = int((opts.backfill_s or 0.0) * _NS)
    fleet = _Fleet(opts, end_ns - span_ns, 1.0)
    yield from fleet.backfill(end_ns)
    last = fleet.flush()
    if last:
        yield last


async def run_fleet(
    push: PushFn,
    opts: FleetOptions,
    *,
    progress: ProgressFn | None = None,
    clock: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> FleetReport:
    """Run the demo fleet, pushing every batch through `push`; see the module docstring.

    `progress(runs_started, runs_total)` is called after each push; `runs_total` is exact for a
    backfill-only call, `opts.runs` otherwise (None when unbounded). `clock` is wall time in ns,
    `sleep` takes seconds; both are injectable so tests run live mode without waiting.
    """
    _validate(opts)
    t0 = clock()

    async def send(batch: list[Stream], total: int | None) -> None:
        if batch:
            await push(batch)
            if progress is not None:
                progress(fleet.started, total)

    if opts.backfill_s is not None:
        fleet = _Fleet(opts, t0 - int(opts.backfill_s * _NS), 1.0)
        going_live = opts.duration_s is not None
        total = opts.runs if going_live else fleet.count_starts_until(t0)
        for batch in fleet.backfill(t0):
            await send(batch, total)
        await send(fleet.flush(), total)
        # from here on, new runs (and their inner timing) are compressed by `speed`
        fleet.scale = 1.0 / opts.speed
    else:
        going_live = True
        fleet = _Fleet(opts, t0, 1.0 / opts.speed)

    if going_live:
        live_start = clock()
        deadline = None if opts.duration_s is None else live_start + int(opts.duration_s * _NS)
        while True:
            now = clock()
            done = deadline is not None and now >= deadline
            if done and deadline is not None:
                now = deadline  # nothing stamped after the end
            fleet.start_until(now)
            for batch in fleet.drain(now):
                await send(batch, opts.runs)
            await send(fleet.flush(), opts.runs)
            if done or (fleet.cap_reached and not fleet.events):
                break
            await sleep(_TICK_S)

    return FleetReport(
        lines=fleet.lines,
        runs=fleet.runs,
        failed=fleet.failed,
        seconds=(clock() - t0) / _NS,
        streams=len(fleet.streams_seen),
    )
