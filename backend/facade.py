"""The backend facade: the one object the TUI, the CLI and the HTTP port call.

`Backend.open(settings)` builds the adapters the config asks for and owns them. Every method is
async, takes plain values and returns dataclasses from `backend.models` (or async iterators of
them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from .analytics import llm_calls, window_stats
from .analytics import performance as performance_of
from .config import Settings, mask_url
from .embedded.logstore import INDEX_ERROR, INDEX_RETRY, INDEX_TOOL, EmbeddedLogStore
from .embedded.tasks import SqliteTaskStore
from .errors import NotFound, ServiceUnavailable, UsageError
from .events import FieldNames, extract_event
from .logql.strings import quote
from .logql.timefmt import format_duration
from .models import (
    DEFAULT_TENANT,
    AgentEvent,
    CacheStats,
    Direction,
    Labels,
    MinerStats,
    Overview,
    Pattern,
    PatternKind,
    PatternReport,
    Performance,
    PushResult,
    QueryResult,
    SourceHealth,
    Stream,
    StreamsResult,
    Summary,
    TailBatch,
    TailEntry,
    Task,
    TaskFilter,
    TaskPage,
    TaskSort,
    TriageState,
    VectorResult,
)
from .patterns.failures import (
    ERROR_LEVEL_RE,
    LOOP_MIN,
    RETRY_RE,
    ErrorLine,
    Indexer,
    LoopGroup,
    MinerMeter,
    RetryHit,
    Signal,
    error_lines,
    loop_signals,
    loop_signals_from_groups,
    mine_patterns,
    retry_storm_from_hits,
    retry_storm_signals,
    signal_patterns,
    sort_by_impact,
    task_signals,
)
from .ports import Cache, LogSource, Summarizer, TaskStore
from .redis_cache import open_cache
from .summarize.extractive import ExtractiveSummarizer
from .summarize.openrouter import (
    OpenRouterSummarizer,
    PreparedInput,
    SummarizerError,
    Usage,
)

log = logging.getLogger(__name__)

NS = 1_000_000_000
RUN_LOG_MARGIN_NS = 60 * NS  # look a minute around a run's first and last event for its lines
MAX_PENDING_EVENTS = 1_000_000  # events kept while the task store is down


@dataclass(slots=True)
class SummaryChunk:
    """One piece of a streamed summary; the last chunk carries the stored `summary`."""

    text: str
    summary: Summary | None = None


class SummaryListener(Protocol):
    """Told of each summary the facade makes (`replayed` False) or replays from the cache or the
    task table (True); see `Backend.add_summary_listener`."""

    def __call__(self, summary: Summary, *, replayed: bool) -> None: ...


def settle_heap() -> None:
    """Call once the process has started up (app built, sources open): moves every object
    that exists now out of the garbage collector's view (`gc.freeze`). Without it each full
    collection walks the startup heap (modules, the app, its schemas) again: a 100-150 ms
    pause every few seconds under load on a small machine, which stalled pushes and live
    tails (bench/tail_ws.py)."""
    gc.collect()
    gc.freeze()


class Backend:
    """Facade over LogSource, TaskStore, Cache and Summarizer."""

    def __init__(
        self,
        settings: Settings,
        *,
        logs: LogSource,
        tasks: TaskStore,
        cache: Cache,
        summarizer: Summarizer,
        ingest_indexer: Indexer | None = None,
    ) -> None:
        """`ingest_indexer`: the (timed) indexer the embedded store classifies lines with, whose
        figures `miner_stats` reports."""
        self.settings = settings
        self.logs = logs
        self.tasks = tasks
        self.cache = cache
        self.summarizer = summarizer
        self.fields = field_names(settings)
        self._summary_flights: dict[str, _SummaryFlight] = {}
        self._summary_listeners: dict[object, SummaryListener] = {}
        self._ingest_indexer = ingest_indexer
        self._read_miner = MinerMeter("read")
        self._pending_events: list[tuple[str, list[AgentEvent]]] = []
        self._pending_count = 0
        self.pending_dropped = 0  # events given up on (the wait queue overflowed)

    @classmethod
    async def open(cls, settings: Settings) -> Backend:
        """Build the adapters the settings ask for."""
        # Memory LRU, in front of Redis when redis.enabled (never fails on a Redis that is down:
        # it starts memory-only and reconnects by itself).
        cache: Cache = await open_cache(settings.cache, settings.redis)
        logs: LogSource
        indexer: Indexer | None = None
        if settings.log_source == "loki":
            from .loki import CachedLogSource, LokiLogSource

            # Loki's answers go through the two-level cache; identical queries share one call.
            logs = CachedLogSource(LokiLogSource(settings.loki), cache)
        else:
            emb = settings.embedded
            indexer = Indexer(field_names(settings), timed=True)
            logs = await EmbeddedLogStore.open(
                settings.embedded_db_path,
                indexer=indexer,
                retention_s=emb.retention,
                max_line_bytes=emb.max_line_bytes,
                tail_buffer=emb.tail_buffer,
            )
        try:
            tasks = await _open_task_store(settings)
        except BaseException:
            await logs.close()
            await cache.close()
            raise
        summarizer: Summarizer = (
            OpenRouterSummarizer(settings.summarizer)
            if settings.summarizer.effective_provider == "openrouter"
            else ExtractiveSummarizer()
        )
        return cls(
            settings,
            logs=logs,
            tasks=tasks,
            cache=cache,
            summarizer=summarizer,
            ingest_indexer=indexer,
        )

    async def close(self) -> None:
        await asyncio.gather(self.logs.close(), self.tasks.close(), self.cache.close())

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def describe_source(self) -> str:
        """Where the logs come from, for headers and `config check`."""
        if isinstance(self.logs, EmbeddedLogStore):
            return f"embedded: {self.logs.path}"
        if self.settings.log_source == "loki":
            return f"loki: {mask_url(self.settings.loki.url)}"
        return self.settings.log_source

    # ------------------------------------------------------------------ ingest

    async def push(self, streams: Sequence[Stream], tenant: str = DEFAULT_TENANT) -> PushResult:
        """Store log entries and fold the agent events they carry into the task table."""
        if isinstance(self.logs, EmbeddedLogStore):
            # The store classified the stored lines in its own writer thread.
            result, _, events = await self.logs.push_detailed(streams, tenant)
        else:
            result = await self.logs.push(streams, tenant)
            accepted = [TailEntry(s.labels, e) for s in streams for e in s.entries]
            events = await asyncio.to_thread(self._extract_events, accepted)
        if events or self._pending_events:
            result.runs_touched = await self._fold(events, tenant)
        return result

    async def _fold(self, events: list[AgentEvent], tenant: str) -> int:
        """Fold events into the task table. While the task store is unreachable the events
        wait in memory (bounded) and are folded, in order, on a later push: the lines are
        stored already, so the push itself succeeds."""
        if events:
            self._pending_events.append((tenant, events))
            self._pending_count += len(events)
        touched = 0
        while self._pending_events:
            t, batch = self._pending_events[0]
            try:
                n = await self.tasks.apply_events(batch, t)
            except ServiceUnavailable:
                while self._pending_count > MAX_PENDING_EVENTS and len(self._pending_events) > 1:
                    _, dropped = self._pending_events.pop(0)
                    self._pending_count -= len(dropped)
                    self.pending_dropped += len(dropped)
                return touched
            self._pending_events.pop(0)
            self._pending_count -= len(batch)
            touched += n if t == tenant else 0
        return touched

    @property
    def pending_events(self) -> int:
        """Agent events waiting for the task store to come back."""
        return self._pending_count

    async def fold_entries(self, entries: Sequence[TailEntry], tenant: str = DEFAULT_TENANT) -> int:
        """Fold the run events of lines stored elsewhere (read back from Loki) into the task
        table. Returns the runs touched."""
        events = await asyncio.to_thread(self._extract_events, entries)
        return await self._fold(events, tenant) if events else 0

    def _extract_events(self, entries: Sequence[TailEntry]) -> list[AgentEvent]:
        names = self.fields
        out = []
        for te in entries:
            e = te.entry
            ev = extract_event(e.ts, e.line, te.labels, e.metadata, names)
            if ev is not None:
                out.append(ev)
        return out

    # ------------------------------------------------------------------ logs

    async def query(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int = 100,
        direction: Direction = Direction.BACKWARD,
        step_ns: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> QueryResult:
        return await self.logs.query_range(
            query,
            start_ns,
            end_ns,
            limit=limit,
            direction=direction,
            step_ns=step_ns,
            tenant=tenant,
        )

    async def query_instant(
        self, query: str, time_ns: int, *, limit: int = 100, tenant: str = DEFAULT_TENANT
    ) -> QueryResult:
        return await self.logs.query_instant(query, time_ns, limit=limit, tenant=tenant)

    async def labels(
        self, start_ns: int, end_ns: int, query: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[str]:
        return await self.logs.labels(start_ns, end_ns, query, tenant)

    async def label_values(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        query: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[str]:
        return await self.logs.label_values(name, start_ns, end_ns, query, tenant)

    async def series(
        self, selectors: Sequence[str], start_ns: int, end_ns: int, tenant: str = DEFAULT_TENANT
    ) -> list[Labels]:
        return await self.logs.series(selectors, start_ns, end_ns, tenant)

    def tail(
        self,
        query: str,
        start_ns: int | None = None,
        *,
        limit: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[TailBatch]:
        return self.logs.tail(query, start_ns, limit=limit, tenant=tenant)

    def run_selector(self, task: Task) -> str:
        """A stream selector that covers a run's streams."""
        agent_label = self.fields.agent
        if task.agent:
            return "{" + f"{agent_label}={quote(task.agent)}" + "}"
        return "{" + f'{agent_label}=~".+"' + "}"

    async def run_logs(
        self,
        run_id: str,
        *,
        limit: int = 5000,
        from_ns: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[TailEntry]:
        """A run's log lines, oldest first: the first `limit` of them, or — to page through a
        long run — the first `limit` from `from_ns` on (inclusive: the caller drops the lines
        at that nanosecond it already has). The run id may sit in a label, in structured
        metadata or only in the JSON line: the cheap query comes first, the JSON parse only
        if needed."""
        task = await self.tasks.get(run_id, tenant)
        if task is None:
            raise NotFound(f"no run with id {run_id!r}")
        first = task.started_at or task.last_seen or time.time_ns()
        last = task.ended_at or task.last_seen or time.time_ns()
        start, end = first - RUN_LOG_MARGIN_NS, max(last, first) + RUN_LOG_MARGIN_NS
        if from_ns is not None:
            start = max(start, from_ns)
        sel = self.run_selector(task)
        rid, q_id = self.fields.run_id, quote(run_id)
        queries = [f"{sel} | {rid}={q_id}", f"{sel} |= {q_id} | json | {rid}={q_id}"]
        for q in queries:
            res = await self.logs.query_range(
                q, start, end, limit=limit, direction=Direction.FORWARD, tenant=tenant
            )
            assert isinstance(res, StreamsResult)
            entries = [TailEntry(s.labels, e) for s in res.streams for e in s.entries]
            if entries:
                entries.sort(key=lambda te: te.entry.ts)
                return entries
        return []

    # ------------------------------------------------------------------ tasks

    async def list_tasks(
        self,
        flt: TaskFilter | None = None,
        *,
        sort: TaskSort = TaskSort.FAILING_FIRST,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        return await self.tasks.list(flt or TaskFilter(), sort=sort, limit=limit, cursor=cursor)

    async def get_task(self, run_id: str, tenant: str = DEFAULT_TENANT) -> Task:
        task = await self.tasks.get(run_id, tenant)
        if task is None:
            raise NotFound(f"no run with id {run_id!r}")
        return task

    async def set_triage(
        self,
        run_id: str,
        state: TriageState,
        *,
        by: str,
        note: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Task:
        return await self.tasks.set_triage(run_id, state, by=by, note=note, tenant=tenant)

    async def set_status(self, run_id: str, status: str, tenant: str = DEFAULT_TENANT) -> Task:
        return await self.tasks.set_status(run_id, status, tenant=tenant)

    async def task_counts(self, flt: TaskFilter | None = None) -> dict[str, int]:
        return await self.tasks.counts(flt or TaskFilter())

    # ------------------------------------------------------------------ summaries

    def add_summary_listener(self, fn: SummaryListener) -> Callable[[], None]:
        """Call `fn(summary, replayed=...)` once per summary this facade makes or replays,
        whoever asked for it (TUI, CLI, HTTP port), however many readers share it: as soon as
        it is made (before it is stored: its tokens are spent even if storing fails). Called on
        the event loop; it must not block. A listener that raises is logged and skipped.
        Returns a function that removes the listener."""
        token = object()
        self._summary_listeners[token] = fn

        def remove() -> None:
            self._summary_listeners.pop(token, None)

        return remove

    def _notify_summary(self, summary: Summary, *, replayed: bool) -> None:
        for fn in list(self._summary_listeners.values()):
            try:
                fn(summary, replayed=replayed)
            except Exception:
                log.exception("a summary listener failed (the summary goes on)")

    async def summarize(
        self,
        run_id: str,
        *,
        refresh: bool = False,
        model: str | None = None,
        signals: Sequence[str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[SummaryChunk]:
        """Stream a run's summary; the last chunk carries the stored `Summary`.

        With OpenRouter, the run's lines are redacted and compressed into a prompt (with the
        run's facts and failure signals; `signals` None detects them in the lines); the prompt's
        hash, with tenant, run and model, keys the stored summary, which is replayed from the
        cache or the task table without a request unless `refresh`. Concurrent requests for the
        same key share ONE request and all stream it as it arrives (it completes, and is stored,
        even if every reader goes away; a `refresh` that finds one in flight joins it). `model`
        overrides summarizer.model for this request. If the AI summary fails (no key, a rejected
        key, no credit, a timeout...), a chunk says so and why, the extractive summary follows,
        and the final `Summary` is the extractive one with `error` set: stored in the task table
        but not cached, so the next request tries the AI again. Any other summarizer (the extractive
        one) is keyed by a hash of the raw lines.
        """
        task = await self.get_task(run_id, tenant)
        entries = await self.run_logs(run_id, tenant=tenant)
        lines = [te.entry.line for te in entries]
        ai = self.summarizer if isinstance(self.summarizer, OpenRouterSummarizer) else None
        prepared: PreparedInput | None = None
        if ai is not None:

            def prepare() -> PreparedInput:
                sig = self._run_signals(task, entries) if signals is None else signals
                return ai.prepare(task, lines, sig)

            prepared = await asyncio.to_thread(prepare)
            model_id = model or ai.model
            digest = prepared.input_hash
        else:
            model_id = self.summarizer.name
            digest = hashlib.sha256(orjson.dumps([model_id, task.status, lines])).hexdigest()[:32]
        key = f"summary:{tenant}:{run_id}:{model_id}:{digest}"
        flight = self._summary_flights.get(key)
        if flight is None:  # no await since the lookup: nobody else can start this key now
            flight = _SummaryFlight()
            self._summary_flights[key] = flight
            flight.task = asyncio.create_task(
                self._make_summary(
                    flight, key, task, lines, prepared, model_id, digest, refresh, tenant
                )
            )
        async for chunk in flight.follow():
            yield chunk

    def _run_signals(self, task: Task, entries: Sequence[TailEntry]) -> list[str]:
        """The agent failure signals (loop, retry storm, stall) found in one run, described."""
        tools = [te for te in entries if "tool.call" in te.entry.line]  # as failure_patterns
        sigs = (
            loop_signals(tools, self.fields)
            + retry_storm_signals(entries, self.fields)
            + task_signals([task])
        )
        return list(dict.fromkeys(s.description for s in sigs))

    async def _make_summary(
        self,
        flight: _SummaryFlight,
        key: str,
        task: Task,
        lines: list[str],
        prepared: PreparedInput | None,
        model_id: str,
        digest: str,
        refresh: bool,
        tenant: str,
    ) -> None:
        """The one producer of a flight: replay, or summarize, store and publish."""
        try:
            if not refresh:
                cached = await self._cached_summary(key, task.run_id, digest, tenant, model_id)
                if cached is not None:
                    self._notify_summary(cached, replayed=True)
                    flight.push(SummaryChunk(cached.text, cached))
                    return
            error = ""
            parts: list[str] = []
            usage = Usage()
            stream = None
            try:
                if prepared is not None and isinstance(self.summarizer, OpenRouterSummarizer):
                    stream = self.summarizer.complete(prepared.messages, model=model_id)
                    chunks: AsyncIterator[str] = stream.__aiter__()
                else:
                    chunks = self.summarizer.summarize(task, lines)
                async for text in chunks:
                    parts.append(text)
                    flight.push(SummaryChunk(text))
            except SummarizerError as exc:
                error = str(exc)
            if stream is not None and stream.usage is not None:
                usage = stream.usage
            if not error:
                summary = Summary(
                    run_id=task.run_id,
                    text="".join(parts),
                    model=model_id,
                    offline=model_id == "extractive",
                    input_hash=digest,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cost_usd=usage.cost_usd or 0.0,
                    created_at=time.time_ns(),
                )
                self._notify_summary(summary, replayed=False)
                await self.tasks.save_summary(summary, tenant)
                await self.cache.set(key, orjson.dumps(summary))
                flight.push(SummaryChunk("", summary))
                return
            # the fallback: say why, then the extractive summary (stored, never cached)
            lead = "\n\n" if parts else ""
            flight.push(SummaryChunk(f"{lead}AI summary failed: {error}.\n\n"))
            offline: list[str] = []
            async for text in ExtractiveSummarizer().summarize(task, lines):
                offline.append(text)
                flight.push(SummaryChunk(text))
            summary = Summary(
                run_id=task.run_id,
                text="".join(offline),
                model="extractive",
                offline=True,
                input_hash=digest,
                input_tokens=usage.input_tokens,  # a stream that broke off may still be billed
                output_tokens=usage.output_tokens,
                cost_usd=usage.cost_usd or 0.0,
                created_at=time.time_ns(),
                error=error,
            )
            self._notify_summary(summary, replayed=False)
            await self.tasks.save_summary(summary, tenant)
            flight.push(SummaryChunk("", summary))
        except BaseException as exc:
            flight.finish(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            flight.finish()
            if self._summary_flights.get(key) is flight:
                del self._summary_flights[key]

    async def _cached_summary(
        self, key: str, run_id: str, digest: str, tenant: str, model_id: str
    ) -> Summary | None:
        raw = await self.cache.get(key)
        if raw is not None:
            return Summary(**orjson.loads(raw))
        stored = await self.tasks.get_summary(run_id, digest, tenant)
        if stored is not None and stored.model == model_id and not stored.error:
            await self.cache.set(key, orjson.dumps(stored))
            return stored
        return None

    async def summary(
        self,
        run_id: str,
        *,
        refresh: bool = False,
        model: str | None = None,
        signals: Sequence[str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Summary:
        """The whole summary at once (see `summarize`)."""
        last: Summary | None = None
        async for chunk in self.summarize(
            run_id, refresh=refresh, model=model, signals=signals, tenant=tenant
        ):
            if chunk.summary is not None:
                last = chunk.summary
        assert last is not None
        return last

    # ------------------------------------------------------------------ failure patterns

    async def collect_entries(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        cap: int = 200_000,
        tenant: str = DEFAULT_TENANT,
    ) -> list[TailEntry]:
        """All entries of a log query in [start, end), oldest first, paging backward past the
        source's per-query limit (next end = oldest seen + 1 ns; entries at that boundary already
        seen are dropped, since several may share a nanosecond). Stops at `cap` entries."""
        page = min(cap, getattr(self.logs, "max_entries_per_query", 5000))
        out: list[TailEntry] = []
        seen_at_boundary: set[tuple[str, str]] = set()
        end = end_ns
        while len(out) < cap and end > start_ns:
            res = await self.logs.query_range(query, start_ns, end, limit=page, tenant=tenant)
            if not isinstance(res, StreamsResult):
                raise UsageError(f"expected a log query, got a metric query: {query}")
            got = [TailEntry(s.labels, e) for s in res.streams for e in s.entries]
            if not got:
                break
            oldest = min(te.entry.ts for te in got)
            fresh = [
                te
                for te in got
                if te.entry.ts != end - 1 or (te.entry.line, str(te.labels)) not in seen_at_boundary
            ]
            out.extend(fresh)
            if len(got) < page:
                break
            seen_at_boundary = {
                (te.entry.line, str(te.labels)) for te in got if te.entry.ts == oldest
            }
            end = oldest + 1
        out.sort(key=lambda te: te.entry.ts)
        return out[-cap:]

    async def failure_patterns(
        self,
        start_ns: int,
        end_ns: int,
        *,
        agent: str | None = None,
        run_id: str | None = None,
        buckets: int = 30,
        tenant: str = DEFAULT_TENANT,
    ) -> PatternReport:
        """Error templates and agent failure signals of [start, end), each compared with the
        previous window of the same length. Cached: briefly when the window touches now, for
        longer when it lies wholly in the past."""
        if end_ns <= start_ns:
            raise UsageError("the time window is empty: its end must be after its start")
        now = time.time_ns()
        key = f"patterns:{tenant}:{start_ns}:{end_ns}:{agent or ''}:{run_id or ''}:{buckets}"
        raw = await self.cache.get(key)
        if raw is not None:
            return _report_from_json(raw)
        report = await self._compute_patterns(start_ns, end_ns, agent, run_id, buckets, tenant)
        ttl = 15.0 if end_ns > now - 60 * NS else 3600.0
        await self.cache.set(key, orjson.dumps(report), ttl)
        return report

    async def _compute_patterns(
        self,
        start_ns: int,
        end_ns: int,
        agent: str | None,
        run_id: str | None,
        buckets: int,
        tenant: str,
    ) -> PatternReport:
        names = self.fields
        prev_start = start_ns - (end_ns - start_ns)
        flt = TaskFilter(
            since_ns=prev_start,
            until_ns=end_ns,
            agents=(agent,) if agent else (),
            run_ids=(run_id,) if run_id else (),
            tenant=tenant,
        )
        if isinstance(self.logs, EmbeddedLogStore):
            return await self._indexed_patterns(
                self.logs, start_ns, end_ns, agent, run_id, buckets, tenant, flt
            )
        if run_id:
            scoped = await self.run_logs(run_id, tenant=tenant)
            errors_in = retries_in = tools_in = scoped
        else:
            agent_m = f", {names.agent}={quote(agent)}" if agent else ""
            lvl = names.level
            errors_in, retries_in, tools_in = await asyncio.gather(
                self.collect_entries(
                    "{" + f"{lvl}=~{quote(ERROR_LEVEL_RE)}{agent_m}" + "}",
                    prev_start,
                    end_ns,
                    tenant=tenant,
                ),
                self.collect_entries(
                    "{"
                    + (f"{names.agent}={quote(agent)}" if agent else f'{names.agent}=~".+"')
                    + "}"
                    + f" |~ {quote(RETRY_RE)}",
                    prev_start,
                    end_ns,
                    tenant=tenant,
                ),
                self.collect_entries(
                    "{"
                    + (f"{names.agent}={quote(agent)}" if agent else f'{names.agent}=~".+"')
                    + "}"
                    + ' |= "tool.call"',
                    prev_start,
                    end_ns,
                    tenant=tenant,
                ),
            )
        tasks = await self._all_tasks(flt)
        # with a run id the three are one list, classified three times: its lines count once
        n_read = len(errors_in) if run_id else len(errors_in) + len(retries_in) + len(tools_in)

        def compute() -> PatternReport:
            t0 = time.perf_counter()
            lines = error_lines(errors_in, names)
            patterns, per_bucket, _ = mine_patterns(lines, start_ns, end_ns, buckets)
            sigs = (
                loop_signals(tools_in, names)
                + retry_storm_signals(retries_in, names)
                + task_signals(tasks)
            )
            patterns += signal_patterns(sigs, start_ns, end_ns, buckets)
            self._read_miner.add(n_read, time.perf_counter() - t0)
            return _report(start_ns, end_ns, buckets, patterns, per_bucket)

        return await asyncio.to_thread(compute)

    async def _indexed_patterns(
        self,
        store: EmbeddedLogStore,
        start_ns: int,
        end_ns: int,
        agent: str | None,
        run_id: str | None,
        buckets: int,
        tenant: str,
        flt: TaskFilter,
    ) -> PatternReport:
        """The same report from the store's line index (filled on ingest): error lines come as
        masked messages and signals as pre-grouped rows, so no line is read or parsed again;
        only a few sample lines are fetched."""
        prev_start = flt.since_ns or start_ns
        lo, hi = prev_start, end_ns
        errs, retries, loops, tasks = await asyncio.gather(
            store.index_rows(INDEX_ERROR, lo, hi, agent=agent, run_id=run_id, tenant=tenant),
            store.index_rows(INDEX_RETRY, lo, hi, agent=agent, run_id=run_id, tenant=tenant),
            store.index_groups(
                INDEX_TOOL, lo, hi, min_count=LOOP_MIN, agent=agent, run_id=run_id, tenant=tenant
            ),
            self._all_tasks(flt),
        )

        def compute() -> tuple[list[Pattern], list[int], dict[str, list[int]], list[Signal]]:
            t0 = time.perf_counter()
            lines = [ErrorLine(ts, key, rid, ag, "", eid) for ts, rid, ag, key, eid in errs]
            patterns, per_bucket, sample_ids = mine_patterns(lines, start_ns, end_ns, buckets)
            sigs = (
                loop_signals_from_groups(
                    LoopGroup(rid, ag, key, n, ts, "", eid) for rid, ag, key, n, ts, eid in loops
                )
                + retry_storm_from_hits(
                    RetryHit(ts, rid, ag, "", eid) for ts, rid, ag, _key, eid in retries
                )
                + task_signals(tasks)
            )
            # index rows, not lines: the lines were classified on ingest
            self._read_miner.add(len(errs) + len(retries) + len(loops), time.perf_counter() - t0)
            return patterns, per_bucket, sample_ids, sigs

        patterns, per_bucket, sample_ids, sigs = await asyncio.to_thread(compute)
        wanted = [i for ids in sample_ids.values() for i in ids]
        wanted += [s.entry_id for s in sigs if not s.sample and s.entry_id]
        lines_by_id = await store.lines_by_id(wanted)
        for p in patterns:
            p.samples = [lines_by_id[i] for i in sample_ids.get(p.id, []) if i in lines_by_id]
        for sig in sigs:
            if not sig.sample:
                sig.sample = lines_by_id.get(sig.entry_id, "")
        patterns += signal_patterns(sigs, start_ns, end_ns, buckets)
        return _report(start_ns, end_ns, buckets, patterns, per_bucket)

    # ------------------------------------------------------------------ analytics

    async def _all_tasks(self, flt: TaskFilter, cap: int = 50_000) -> list[Task]:
        """Every run the filter selects (up to `cap`), newest first, page by page."""
        tasks: list[Task] = []
        cursor: str | None = None
        while len(tasks) < cap:
            page = await self.tasks.list(flt, sort=TaskSort.NEWEST, limit=500, cursor=cursor)
            tasks.extend(page.tasks)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tasks

    async def _log_totals(self, start_ns: int, end_ns: int, tenant: str) -> tuple[int, int, int]:
        """(error lines, log lines, log bytes) in (start, end], from metric queries."""
        rng = format_duration(end_ns - start_ns)
        lvl, agent = self.fields.level, self.fields.agent
        queries = [
            f"sum(count_over_time({{{lvl}=~{quote(ERROR_LEVEL_RE)}}}[{rng}]))",
            f'sum(count_over_time({{{agent}=~".+"}}[{rng}]))',
            f'sum(bytes_over_time({{{agent}=~".+"}}[{rng}]))',
        ]
        out = []
        for q in queries:
            res = await self.logs.query_instant(q, end_ns, tenant=tenant)
            value = 0.0
            if isinstance(res, VectorResult) and res.samples:
                value = res.samples[0].value
            out.append(int(value))
        return out[0], out[1], out[2]

    async def overview(
        self, start_ns: int, end_ns: int, *, tenant: str = DEFAULT_TENANT
    ) -> Overview:
        """Runs by status, success rate, active and stalled runs, error lines, log volume,
        tokens and cost for [start, end) and for the previous window of the same length."""
        if end_ns <= start_ns:
            raise UsageError("the time window is empty: its end must be after its start")
        prev = start_ns - (end_ns - start_ns)
        tasks = await self._all_tasks(TaskFilter(since_ns=prev, until_ns=end_ns, tenant=tenant))
        cur_logs, prev_logs = await asyncio.gather(
            self._log_totals(start_ns, end_ns, tenant), self._log_totals(prev, start_ns, tenant)
        )
        windows = []
        for (lo, hi), (errs, lines, nbytes) in (
            ((start_ns, end_ns), cur_logs),
            ((prev, start_ns), prev_logs),
        ):
            windows.append(
                window_stats(tasks, lo, hi, error_lines=errs, log_lines=lines, log_bytes=nbytes)
            )
        return Overview(current=windows[0], previous=windows[1])

    async def performance(
        self, start_ns: int, end_ns: int, *, buckets: int = 24, tenant: str = DEFAULT_TENANT
    ) -> Performance:
        """Run durations p50/p95/p99 by agent, task and time bucket; runs per hour; LLM calls'
        latency, tokens and cost by model."""
        if end_ns <= start_ns:
            raise UsageError("the time window is empty: its end must be after its start")
        tasks = await self._all_tasks(TaskFilter(since_ns=start_ns, until_ns=end_ns, tenant=tenant))
        entries = await self.collect_entries(
            "{" + f'{self.fields.agent}=~".+"' + '} |= "llm.call"', start_ns, end_ns, tenant=tenant
        )
        names = self.fields

        def compute() -> Performance:
            return performance_of(tasks, llm_calls(entries, names), start_ns, end_ns, buckets)

        return await asyncio.to_thread(compute)

    async def warm_up(self) -> None:
        """Pay start-up costs now rather than on the first key press (the openai import, ~0.4 s,
        when summaries go to OpenRouter). For long-lived callers such as the TUI."""
        warm = getattr(self.summarizer, "warm_up", None)
        if warm is not None:
            await warm()

    # ------------------------------------------------------------------ health and stats

    async def health(self) -> list[SourceHealth]:
        """Each source's state (logs, tasks, and the shared cache when there is one)."""
        probes = [self.logs.health(), self.tasks.health()]
        cache_health = getattr(self.cache, "health", None)
        if cache_health is not None:
            probes.append(cache_health())
        return list(await asyncio.gather(*probes))

    async def cache_stats(self) -> list[CacheStats]:
        return await self.cache.stats()

    async def miner_stats(self) -> list[MinerStats]:
        """Lines the failure-pattern miner went through and the seconds it took, since start:
        on ingest (the embedded store; zero on other sources) and for reports ("read")."""
        ingest = self._ingest_indexer
        return [
            ingest.stats("ingest") if ingest is not None else MinerStats("ingest"),
            self._read_miner.stats(),
        ]


async def _open_task_store(settings: Settings) -> TaskStore:
    """SQLite (embedded default) or PostgreSQL. A PostgreSQL that is down at start does not stop
    agentlog: its health says so, and the store connects on first use once it is back."""
    if settings.tasks.store == "postgres":
        from .postgres.tasks import PostgresTaskStore

        pg = settings.postgres
        store = PostgresTaskStore(
            pg.effective_dsn,
            pool_min=pg.pool_min,
            pool_max=pg.pool_max,
            schema=pg.schema_name,
            stall_after_s=settings.tasks.stall_after,
        )
        with contextlib.suppress(ServiceUnavailable):
            await store.open()
        return store
    sqlite = SqliteTaskStore(settings.tasks_db_path, stall_after_s=settings.tasks.stall_after)
    await sqlite.open()
    return sqlite


def field_names(settings: Settings) -> FieldNames:
    """The data contract's field names, as configured."""
    f = settings.fields
    return FieldNames(
        run_id=f.run_id,
        agent=f.agent,
        event=f.event,
        level=f.level,
        status=f.status,
        model=f.model,
        input_tokens=f.input_tokens,
        output_tokens=f.output_tokens,
        cost_usd=f.cost_usd,
        task=f.task,
        error_type=f.error_type,
        error_message=f.error_message,
        tool=f.tool,
        step=f.step,
    )


def _report(
    start_ns: int, end_ns: int, buckets: int, patterns: list[Pattern], per_bucket: list[int]
) -> PatternReport:
    bucket_ns = max(1, (end_ns - start_ns) // buckets)
    per_min = bucket_ns / (60 * NS)
    rate = [((start_ns + (i + 1) * bucket_ns) / NS, n / per_min) for i, n in enumerate(per_bucket)]
    return PatternReport(
        start_ns=start_ns,
        end_ns=end_ns,
        bucket_ns=bucket_ns,
        patterns=sort_by_impact(patterns),
        error_rate=rate,
        error_lines=sum(per_bucket),
    )


def _report_from_json(raw: bytes) -> PatternReport:
    d = orjson.loads(raw)
    return PatternReport(
        start_ns=d["start_ns"],
        end_ns=d["end_ns"],
        bucket_ns=d["bucket_ns"],
        patterns=[Pattern(**{**p, "kind": PatternKind(p["kind"])}) for p in d["patterns"]],
        error_rate=[(t, v) for t, v in d["error_rate"]],
        error_lines=d["error_lines"],
    )


class _SummaryFlight:
    """A summary being made: its producer pushes chunks, every caller for the key follows them
    from the start (late joiners catch up, then stream live)."""

    def __init__(self) -> None:
        self.chunks: list[SummaryChunk] = []
        self.done = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None  # the producer (held here, so it lives)
        self._wake = asyncio.Event()

    def push(self, chunk: SummaryChunk) -> None:
        self.chunks.append(chunk)
        self._notify()

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done:
            self.done, self.error = True, error
            self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def follow(self) -> AsyncIterator[SummaryChunk]:
        i = 0
        while True:
            wake = self._wake
            if i < len(self.chunks):
                i += 1
                yield self.chunks[i - 1]
            elif self.done:
                if self.error is not None:
                    raise self.error
                return
            else:
                await wake.wait()
