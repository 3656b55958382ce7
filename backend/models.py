"""Plain dataclasses that cross the backend boundary.

Everything the facade returns is one of these (or a list / async iterator of them): no dicts of
unknown shape leave an adapter. Timestamps are integer nanoseconds since the Unix epoch unless a
field says otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Labels = dict[str, str]

DEFAULT_TENANT = "fake"  # Loki's tenant when auth is off; the embedded store uses it too


class Direction(enum.StrEnum):
    BACKWARD = "backward"
    FORWARD = "forward"


# ---------------------------------------------------------------- logs


@dataclass(slots=True)
class LogEntry:
    """One log line. `metadata` is Loki's structured metadata (flat str -> str)."""

    ts: int
    line: str
    metadata: Labels = field(default_factory=dict)


@dataclass(slots=True)
class Stream:
    """A label set and its entries (a push unit, or one stream of a log-query result)."""

    labels: Labels
    entries: list[LogEntry] = field(default_factory=list)


@dataclass(slots=True)
class RejectedEntry:
    labels: Labels
    ts: int
    reason: str


@dataclass(slots=True)
class PushResult:
    """What a push did. Accepted entries are durable once this is returned."""

    accepted: int = 0
    duplicates: int = 0
    truncated: int = 0
    rejected: list[RejectedEntry] = field(default_factory=list)
    runs_touched: int = 0


@dataclass(slots=True)
class QueryStats:
    exec_time: float = 0.0
    lines_processed: int = 0
    bytes_processed: int = 0
    entries_returned: int = 0


@dataclass(slots=True)
class StreamsResult:
    """Result of a log query: Loki's `resultType: streams`."""

    streams: list[Stream]
    stats: QueryStats = field(default_factory=QueryStats)
    result_type: str = "streams"


@dataclass(slots=True)
class MatrixSeries:
    metric: Labels
    values: list[tuple[float, float]]  # (unix seconds, value), oldest first


@dataclass(slots=True)
class MatrixResult:
    """Result of a metric range query: Loki's `resultType: matrix`."""

    series: list[MatrixSeries]
    stats: QueryStats = field(default_factory=QueryStats)
    result_type: str = "matrix"


@dataclass(slots=True)
class VectorSample:
    metric: Labels
    ts: float  # unix seconds
    value: float


@dataclass(slots=True)
class VectorResult:
    """Result of an instant metric query: Loki's `resultType: vector`."""

    samples: list[VectorSample]
    stats: QueryStats = field(default_factory=QueryStats)
    result_type: str = "vector"


@dataclass(slots=True)
class ScalarResult:
    ts: float
    value: float
    stats: QueryStats = field(default_factory=QueryStats)
    result_type: str = "scalar"


QueryResult = StreamsResult | MatrixResult | VectorResult | ScalarResult


@dataclass(slots=True)
class TailEntry:
    labels: Labels
    entry: LogEntry


@dataclass(slots=True)
class TailBatch:
    """A batch from a live tail. `dropped` counts entries this subscriber missed because it fell
    behind (they are still in the store; `dropped_from`/`dropped_to` bound their timestamps)."""

    entries: list[TailEntry]
    dropped: int = 0
    dropped_from: int | None = None
    dropped_to: int | None = None


# ---------------------------------------------------------------- runs (tasks)


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    STALLED = "stalled"  # derived at read time: running and silent past the stall threshold


TERMINAL_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMEOUT}
)
FAILING_STATUSES = frozenset({RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.STALLED})


class TriageState(enum.StrEnum):
    NEW = "new"
    ACKED = "acked"
    RESOLVED = "resolved"
    IGNORED = "ignored"


class EventKind(enum.StrEnum):
    RUN_START = "run.start"
    RUN_END = "run.end"
    STEP = "step"
    TOOL_CALL = "tool.call"
    LLM_CALL = "llm.call"
    ERROR = "error"
    LOG = "log"  # any other line that carries a run id


@dataclass(slots=True)
class AgentEvent:
    """What the data contract extracts from one log line (see DESIGN.md, "Logs and runs")."""

    ts: int
    run_id: str
    kind: EventKind
    agent: str = ""
    task: str = ""
    level: str = ""
    status: str = ""  # run.end status as logged
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error_type: str = ""
    error_message: str = ""
    tool: str = ""
    step: str = ""


@dataclass(slots=True)
class Task:
    """A run of an agent, as the task table keeps it."""

    run_id: str
    agent: str = ""
    task: str = ""
    status: RunStatus = RunStatus.RUNNING
    started_at: int | None = None  # ns
    ended_at: int | None = None  # ns
    last_seen: int | None = None  # ns, newest event of the run
    step_count: int = 0
    error_count: int = 0
    last_error: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    triage: TriageState = TriageState.NEW
    triage_by: str = ""
    triage_note: str = ""
    triage_at: int | None = None
    tenant: str = DEFAULT_TENANT

    @property
    def duration_ns(self) -> int | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else self.last_seen
        return None if end is None else max(0, end - self.started_at)


class TaskSort(enum.StrEnum):
    FAILING_FIRST = "failing"  # failing and stalled first, then newest
    NEWEST = "newest"
    OLDEST = "oldest"


@dataclass(slots=True)
class TaskFilter:
    statuses: tuple[RunStatus, ...] = ()
    agents: tuple[str, ...] = ()
    triage: tuple[TriageState, ...] = ()
    since_ns: int | None = None  # started_at >= since (or last_seen, for runs with no start)
    until_ns: int | None = None
    text: str = ""  # substring of task name, run id or last error (case-insensitive)
    run_ids: tuple[str, ...] = ()
    tenant: str = DEFAULT_TENANT


@dataclass(slots=True)
class TaskPage:
    tasks: list[Task]
    next_cursor: str | None = None  # opaque; pass back to get the next page


# ---------------------------------------------------------------- cache and summaries


@dataclass(slots=True)
class CacheStats:
    level: str
    hits: int = 0
    misses: int = 0
    sets: int = 0
    evictions: int = 0
    expirations: int = 0
    size: int = 0
    max_size: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(slots=True)
class MinerStats:
    """Work of the failure-pattern miner since start, by `path`: "ingest" (lines classified as
    the embedded store stores them) or "read" (lines, or the embedded store's index rows, that
    failure-pattern reports classified and mined)."""

    path: str
    lines: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class Summary:
    run_id: str
    text: str
    model: str  # "extractive" for the offline summarizer
    offline: bool
    input_hash: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    created_at: int = 0  # ns
    error: str = ""  # plain-words reason when an online summary fell back to offline


# ---------------------------------------------------------------- health


class HealthState(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(slots=True)
class SourceHealth:
    name: str
    kind: str  # "embedded", "loki", "postgres", "redis", "memory", ...
    state: HealthState = HealthState.OK
    detail: str = ""  # where: a path or URL
    reason: str = ""
    since: int = 0  # ns
    latency_ms: float | None = None


# ---------------------------------------------------------------- failure patterns


class PatternKind(enum.StrEnum):
    ERROR = "error"  # a template mined from error lines
    LOOP = "loop"  # the same tool call with the same arguments repeated in a run
    RETRY_STORM = "retry_storm"  # many 429/5xx retries in a short span
    STALL = "stall"  # a running run silent longer than the stall threshold
    COST_SPIKE = "cost_spike"  # a run's cost far above its agent's median


@dataclass(slots=True)
class Pattern:
    """A failure pattern in a time window: a mined error template or an agent failure signal."""

    id: str  # stable across refreshes for the same template/signal
    kind: PatternKind
    template: str  # `<*>` marks variables; for signals, a readable description
    count: int  # matching lines (or signal occurrences) in the window
    run_ids: list[str]  # affected runs (capped; see run_count)
    run_count: int
    agents: list[str]
    first_seen: int  # ns
    last_seen: int  # ns
    trend: list[int]  # count per bucket across the window, oldest first
    samples: list[str]  # a few raw lines
    new: bool = False  # absent from the previous window of the same length
    previous_count: int = 0  # count in that previous window
    growth: float | None = None  # count / previous_count (None when previous is 0)


@dataclass(slots=True)
class PatternReport:
    start_ns: int
    end_ns: int
    bucket_ns: int
    patterns: list[Pattern]  # sorted by impact: affected runs, then count
    error_rate: list[tuple[float, float]] = field(default_factory=list)  # (unix s, errors/min)
    error_lines: int = 0


# ---------------------------------------------------------------- analytics


@dataclass(slots=True)
class WindowStats:
    """Figures of one time window (the overview shows the current and the previous one)."""

    start_ns: int
    end_ns: int
    runs: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    success_rate: float | None = None  # succeeded / ended runs; None when no run ended
    active: int = 0  # running, not stalled
    stalled: int = 0
    error_lines: int = 0
    log_lines: int = 0
    log_bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(slots=True)
class Overview:
    current: WindowStats
    previous: WindowStats


@dataclass(slots=True)
class Percentiles:
    count: int
    p50: float
    p95: float
    p99: float


@dataclass(slots=True)
class ModelUsage:
    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: Percentiles | None = None


@dataclass(slots=True)
class Performance:
    """Run durations (seconds) by agent, by task and per time bucket; LLM usage by model."""

    start_ns: int
    end_ns: int
    bucket_ns: int
    duration_by_agent: dict[str, Percentiles]
    duration_by_task: dict[str, Percentiles]
    duration_by_bucket: list[tuple[float, Percentiles | None]]  # (bucket end, unix s)
    runs_per_hour: list[tuple[float, float]]  # (bucket end, unix s; runs started per hour)
    models: list[ModelUsage]
    llm_latency_ms: Percentiles | None = None
