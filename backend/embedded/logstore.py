"""The embedded log store: a small Loki-compatible store on one SQLite file.

Schema (WAL mode):

- `streams`: one row per (tenant, label set); the label set is kept as canonical JSON, and the
  whole table is mirrored in memory (it is small: streams are label sets, not runs), so stream
  selectors are matched in Python once per query and pushed into SQL as a list of stream ids.
- `entries`: (id, stream_id, ts, h, line, metadata). `id` is AUTOINCREMENT, so it only grows and
  is never reused: a tail follows it as a cursor and never skips or repeats an entry, even across
  processes. The unique index (stream_id, ts, h) — `h` a 64-bit hash of line and metadata — drops an
  exact duplicate silently (as Loki does) and serves every per-stream time-range scan; the index on
  `ts` serves scans across streams and retention.

Queries: the selector picks stream ids; time bounds and literal `|=`/`!=` line filters at the head
of the pipeline go into SQL; the rest of the pipeline runs in Python on a reader thread. Metric
queries whose pipeline is fully pushed down are counted in SQL per (stream, bucket) and handed to
the metric engine as pre-aggregated samples, so a 24 h count over a million lines never leaves
SQLite row by row.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import itertools
import operator
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..errors import QueryError, StorageError
from ..logql import ast
from ..logql.metric import SeriesData, bucket_width_ns, evaluate_instant, evaluate_range
from ..logql.parser import parse
from ..logql.pipeline import Pipeline, compile_matcher, compile_pipeline, pushdown_line_filters
from ..models import (
    DEFAULT_TENANT,
    AgentEvent,
    Direction,
    HealthState,
    Labels,
    LogEntry,
    MatrixResult,
    PushResult,
    QueryResult,
    QueryStats,
    RejectedEntry,
    ScalarResult,
    SourceHealth,
    Stream,
    StreamsResult,
    TailBatch,
    TailEntry,
    VectorResult,
)
from ..patterns.failures import ErrorLine
from ..patterns.masking import mask
from .fanout import SharedBatch, TailGroup, TailHub
from .sqlite_exec import SqliteExecutor

SCHEMA_VERSION = 2  # 2: line_index (failure patterns and signals, filled on ingest)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    UNIQUE (tenant, labels)
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    h INTEGER NOT NULL,
    line TEXT NOT NULL,
    metadata TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_stream_ts ON entries (stream_id, ts, h);
CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts);
CREATE TABLE IF NOT EXISTS line_index (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    key TEXT NOT NULL,
    entry_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS line_index_kind_ts ON line_index (tenant, kind, ts);
"""

TRUNCATION_MARKER = "…[truncated {n} bytes]"
MARKER_ROOM = 40  # bytes kept free for the marker
FUTURE_GRACE_NS = 10 * 60 * 1_000_000_000  # Loki's creation_grace_period
MAX_LABELS = 15  # Loki's max_label_names_per_series
MAX_LIMIT = 100_000  # hard cap on entries per log query (Loki: max_entries_limit_per_query)
RETENTION_EVERY_S = 300.0
TAIL_POLL_S = 0.05  # how often the tail hub looks for lines other processes wrote (a push here
# wakes it at once); one cheap read (the newest id) per look, and only while tails are open
TAIL_BATCH = 5000  # entries (of every stream) per round of the tail hub
TAIL_GATHER_S = 0.02  # a busy tail hub reads at most this often (50 rounds/s, <= 20 ms added)
TAIL_MAX_GATHER_S = 0.05  # ... and, with hundreds of subscribers, at least this often


def _labels_key(labels: Labels) -> str:
    return orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode()


def _entry_hash(line: str, meta: str | None) -> int:
    h = hashlib.blake2b(line.encode("utf-8", "surrogatepass"), digest_size=8)
    if meta:
        h.update(b"\x00")
        h.update(meta.encode())
    return int.from_bytes(h.digest(), "big", signed=True)


def _clean_text(s: str) -> str:
    """SQLite stores UTF-8: a lone surrogate (undecodable input kept by `surrogateescape`)
    becomes a visible `\\udcxx` escape instead of an encoding error that would lose the line."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


INDEX_ERROR = 1  # line_index kinds (the same numbers as patterns.failures.Indexer's)
INDEX_RETRY = 2
INDEX_TOOL = 3


class LineIndexer(Protocol):
    """Classifies one stored line (see backend.patterns.failures.Indexer)."""

    def index(
        self, labels: Labels, e: LogEntry
    ) -> tuple[AgentEvent | None, ErrorLine | None, list[tuple[int, str, str, str]]]: ...

    def count(self, lines: int, seconds: float) -> None:
        """Told how many lines one push classified and how long that took (for metrics)."""


@functools.lru_cache(maxsize=512)
def _parse_cached(query: str) -> ast.ParsedQuery:
    return parse(query)


@dataclass(slots=True)
class _Plan:
    """A log query made ready to run: stream ids, SQL line filters, the Python pipeline."""

    stream_ids: list[int]
    contains: list[str]
    not_contains: list[str]
    pipeline: Pipeline
    fully_pushed: bool
    tenant: str


class _GroupPlan:
    """A live-tail group's query as the tail hub runs it: compiled once, its streams matched
    again only when new streams appear."""

    __slots__ = ("pipeline", "query", "streams", "streams_at", "tenant")

    def __init__(self, query: ast.LogQuery, tenant: str) -> None:
        self.query, self.tenant = query, tenant
        self.pipeline = compile_pipeline(query.pipeline)
        self.streams: frozenset[int] = frozenset()
        self.streams_at = -1  # the stream mirror's newest id when `streams` was matched


class EmbeddedLogStore:
    """LogSource on SQLite. Build with `await EmbeddedLogStore.open(path, ...)`."""

    max_entries_per_query = MAX_LIMIT

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float = 7 * 86400,  # 0 = keep everything
        max_line_bytes: int = 256 * 1024,
        tail_buffer: int = 10_000,
        busy_timeout_ms: int = 5000,
        clock: Any = time.time_ns,
        indexer: LineIndexer | None = None,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_line_bytes = max_line_bytes
        self.tail_buffer = tail_buffer
        self._clock = clock
        self._db = SqliteExecutor(self.path, init_sql=_SCHEMA, busy_timeout_ms=busy_timeout_ms)
        self._lock = threading.Lock()  # guards the stream mirror (writer and reader threads)
        self._streams: dict[int, tuple[str, Labels]] = {}
        self._stream_ids: dict[tuple[str, str], int] = {}
        self._max_stream_id = 0
        self._last_retention = 0.0
        self._waiters: set[asyncio.Future[None]] = set()
        self._tail_hub = TailHub(
            lambda cursor, groups, upto: self._db.read(
                functools.partial(self._hub_read, cursor=cursor, groups=groups, upto=upto)
            ),
            functools.partial(self._wait_for_push, TAIL_POLL_S),
            TAIL_GATHER_S,
            TAIL_MAX_GATHER_S,
        )
        self._healthy_since = clock()
        self._last_error = ""
        self._indexer = indexer

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> EmbeddedLogStore:
        store = cls(path, **kwargs)
        await store._db.write(store._init)
        await store.apply_retention()
        return store

    def _init(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: log store schema version {version} is newer than this agentlog "
                f"understands ({SCHEMA_VERSION}); upgrade agentlog or point embedded.path elsewhere"
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._refresh_streams(conn)

    async def close(self) -> None:
        await self._tail_hub.stop(StorageError(f"{self.path}: the log store was closed"))
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        await self._db.close()

    # ------------------------------------------------------------------ stream mirror

    def _refresh_streams(self, conn: sqlite3.Connection) -> None:
        """Load streams created since the last look (by this or another process)."""
        rows = conn.execute(
            "SELECT id, tenant, labels FROM streams WHERE id > ? ORDER BY id",
            (self._max_stream_id,),
        ).fetchall()
        if not rows:
            return
        with self._lock:
            for sid, tenant, labels_json in rows:
                self._streams[sid] = (tenant, orjson.loads(labels_json))
                self._stream_ids[(tenant, labels_json)] = sid
                self._max_stream_id = max(self._max_stream_id, sid)

    def _stream_id_for(self, conn: sqlite3.Connection, tenant: str, labels: Labels) -> int:
        key = _labels_key(labels)
        sid = self._stream_ids.get((tenant, key))
        if sid is not None:
            return sid
        conn.execute(
            "INSERT OR IGNORE INTO streams (tenant, labels, created_ns) VALUES (?, ?, ?)",
            (tenant, key, self._clock()),
        )
        (sid,) = conn.execute(
            "SELECT id FROM streams WHERE tenant = ? AND labels = ?", (tenant, key)
        ).fetchone()
        with self._lock:
            self._streams[sid] = (tenant, dict(labels))
            self._stream_ids[(tenant, key)] = sid
            self._max_stream_id = max(self._max_stream_id, sid)
        return int(sid)

    def _match_streams(
        self, conn: sqlite3.Connection, selector: ast.Selector, tenant: str
    ) -> list[int]:
        self._refresh_streams(conn)
        return self._matching(selector, tenant)

    def _matching(self, selector: ast.Selector, tenant: str) -> list[int]:
        """Streams of the mirror (as last refreshed) that match the selector."""
        checks = [(m.name, compile_matcher(m)) for m in selector.matchers]
        with self._lock:
            items = list(self._streams.items())
        return [
            sid
            for sid, (t, labels) in items
            if t == tenant and all(check(labels.get(name)) for name, check in checks)
        ]

    def _labels_of(self, sid: int) -> Labels:
        with self._lock:
            return self._streams[sid][1]

    # ------------------------------------------------------------------ push

    async def push(self, streams: Sequence[Stream], tenant: str = DEFAULT_TENANT) -> PushResult:
        """Store entries; returns once they are committed. Invalid entries are rejected one by one
        with a reason (as Loki's partial failure); the valid ones are kept."""
        result, _, _ = await self.push_detailed(streams, tenant)
        return result

    async def push_detailed(
        self, streams: Sequence[Stream], tenant: str = DEFAULT_TENANT
    ) -> tuple[PushResult, list[TailEntry], list[AgentEvent]]:
        """`push`, also returning the entries that were stored (not rejected, not duplicates), as
        stored (cleaned, truncated), and — with an indexer — the agent events they carry, so the
        caller can fold exactly those into the task table."""
        if not streams:
            return PushResult(), [], []
        result, stored, events = await self._db.write(
            lambda conn: self._push_tx(conn, streams, tenant)
        )
        if result.accepted:
            self._wake_tails()
        if time.monotonic() - self._last_retention > RETENTION_EVERY_S:
            await self.apply_retention()
        return result, stored, events

    def _push_tx(
        self, conn: sqlite3.Connection, streams: Sequence[Stream], tenant: str
    ) -> tuple[PushResult, list[TailEntry], list[AgentEvent]]:
        now = self._clock()
        oldest = now - int(self.retention_s * 1e9) if self.retention_s > 0 else 1
        newest = now + FUTURE_GRACE_NS
        res = PushResult()
        rows: list[tuple[int, int, int, str, str | None]] = []
        kept: list[TailEntry] = []
        cap = self.max_line_bytes
        for stream in streams:
            labels = stream.labels
            reason = _invalid_labels(labels)
            if reason:
                res.rejected.extend(RejectedEntry(labels, e.ts, reason) for e in stream.entries)
                continue
            if not stream.entries:
                continue
            sid = self._stream_id_for(conn, tenant, labels)
            for e in stream.entries:
                ts = e.ts
                if ts <= 0 or ts < oldest:
                    res.rejected.append(
                        RejectedEntry(labels, ts, "timestamp older than the retention period")
                    )
                    continue
                if ts > newest:
                    res.rejected.append(
                        RejectedEntry(labels, ts, "timestamp too new: more than 10m in the future")
                    )
                    continue
                line = e.line
                if len(line) * 4 > cap or not line.isascii():
                    line = _clean_text(line)
                    raw = line.encode("utf-8")
                    if len(raw) > cap:
                        # The marker counts toward the cap, so a stored line never exceeds it.
                        cut = raw[: max(0, cap - MARKER_ROOM)].decode("utf-8", "ignore")
                        line = cut + TRUNCATION_MARKER.format(n=len(raw) - len(cut.encode()))
                        res.truncated += 1
                meta = (
                    orjson.dumps(
                        {_clean_text(k): _clean_text(v) for k, v in e.metadata.items()},
                        option=orjson.OPT_SORT_KEYS,
                    ).decode()
                    if e.metadata
                    else None
                )
                rows.append((sid, ts, _entry_hash(line, meta), line, meta))
                kept.append(
                    TailEntry(labels, e if line is e.line else LogEntry(ts, line, e.metadata))
                )
        if not rows:
            return res, [], []
        insert = (
            "INSERT OR IGNORE INTO entries (stream_id, ts, h, line, metadata) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        conn.execute("SAVEPOINT push")
        before = conn.total_changes
        conn.executemany(insert, rows)
        res.accepted = conn.total_changes - before
        if res.accepted == len(rows):
            # One writer, AUTOINCREMENT: the ids of this batch are consecutive.
            (last,) = conn.execute("SELECT last_insert_rowid()").fetchone()
            ids = list(range(last - len(rows) + 1, last + 1))
        else:
            # Some were exact duplicates (a retried push). Redo row by row to learn which, so
            # only new entries reach the task table. Rare, so the slow path is fine.
            conn.execute("ROLLBACK TO push")
            new_kept, ids = [], []
            for row, te in zip(rows, kept, strict=True):
                cur = conn.execute(insert, row)
                if cur.rowcount == 1:
                    new_kept.append(te)
                    ids.append(int(cur.lastrowid or 0))
            kept = new_kept
            res.accepted = len(kept)
        events = self._index(conn, tenant, kept, ids) if self._indexer is not None else []
        conn.execute("RELEASE push")
        res.duplicates = len(rows) - res.accepted
        return res, kept, events

    def _index(
        self, conn: sqlite3.Connection, tenant: str, kept: Sequence[TailEntry], ids: Sequence[int]
    ) -> list[AgentEvent]:
        """Classify stored lines in the push's own transaction: agent events for the task
        table, and line_index rows (error lines by masked message, retries, tool calls) that
        failure patterns and signals aggregate without reading the lines again."""
        assert self._indexer is not None
        events: list[AgentEvent] = []
        index_rows: list[tuple[str, int, int, str, str, str, int]] = []
        started = time.perf_counter()
        for te, entry_id in zip(kept, ids, strict=True):
            ev, err, extra = self._indexer.index(te.labels, te.entry)
            if ev is not None:
                events.append(ev)
            ts = te.entry.ts
            if err is not None:
                index_rows.append(
                    (tenant, INDEX_ERROR, ts, err.run_id, err.agent, mask(err.message), entry_id)
                )
            for kind, run_id, agent, key in extra:
                index_rows.append((tenant, kind, ts, run_id, agent, key, entry_id))
        self._indexer.count(len(kept), time.perf_counter() - started)
        if index_rows:
            conn.executemany(
                "INSERT INTO line_index (tenant, kind, ts, run_id, agent, key, entry_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                index_rows,
            )
        return events

    async def apply_retention(self) -> int:
        """Delete entries older than the retention period. Returns how many went."""
        self._last_retention = time.monotonic()
        if self.retention_s <= 0:  # 0 = keep everything
            return 0
        cutoff = self._clock() - int(self.retention_s * 1e9)

        def run(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.execute("DELETE FROM entries WHERE ts < ?", (cutoff,))
            n = conn.total_changes - before
            conn.execute("DELETE FROM line_index WHERE ts < ?", (cutoff,))
            return n

        return await self._db.write(run)

    # ------------------------------------------------------------------ queries

    def _plan(self, conn: sqlite3.Connection, q: ast.LogQuery, tenant: str) -> _Plan:
        contains, not_contains = pushdown_line_filters(q.pipeline)
        return _Plan(
            stream_ids=self._match_streams(conn, q.selector, tenant),
            contains=contains,
            not_contains=not_contains,
            pipeline=compile_pipeline(q.pipeline),
            fully_pushed=len(contains) + len(not_contains) == len(q.pipeline),
            tenant=tenant,
        )

    @staticmethod
    def _where(plan: _Plan, lo_op: str, hi_op: str) -> tuple[str, list[Any]]:
        sql = [f"stream_id IN (SELECT value FROM json_each(?)) AND ts {lo_op} ? AND ts {hi_op} ?"]
        params: list[Any] = [orjson.dumps(plan.stream_ids).decode()]
        sql += ["instr(line, ?) > 0"] * len(plan.contains)
        sql += ["instr(line, ?) = 0"] * len(plan.not_contains)
        return " AND ".join(sql), params

    async def query_range(
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
        parsed = _parse_cached(query)
        if end_ns < start_ns:
            raise QueryError("end timestamp must not be before start time")
        if isinstance(parsed.expr, ast.LogQuery):
            _check_limit(limit)
            log_q = parsed.expr
            return await self._db.read(
                lambda c: self._log_query(c, log_q, start_ns, end_ns, limit, direction, tenant)
            )
        if step_ns is None:
            step_ns = max(
                1_000_000_000, (end_ns - start_ns) // 250 // 1_000_000_000 * 1_000_000_000
            )
        if step_ns <= 0:
            raise QueryError("zero or negative query resolution step widths are not accepted")
        if (end_ns - start_ns) // step_ns > 11_000:
            raise QueryError(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        expr = parsed.expr
        step = step_ns

        def run(conn: sqlite3.Connection) -> MatrixResult:
            t0 = time.perf_counter()
            stats = QueryStats()
            data = self._metric_data(conn, parsed, tenant, start_ns, end_ns, step, stats)
            series = evaluate_range(expr, data, start_ns, end_ns, step)
            stats.exec_time = time.perf_counter() - t0
            return MatrixResult(series=series, stats=stats)

        return await self._db.read(run)

    async def query_instant(
        self,
        query: str,
        time_ns: int,
        *,
        limit: int = 100,
        direction: Direction = Direction.BACKWARD,
        tenant: str = DEFAULT_TENANT,
    ) -> QueryResult:
        parsed = _parse_cached(query)
        if isinstance(parsed.expr, ast.LogQuery):
            raise QueryError(
                "log queries are not supported as an instant query type, please change your "
                "query to a range query type"
            )
        expr = parsed.expr

        def run(conn: sqlite3.Connection) -> VectorResult | ScalarResult:
            t0 = time.perf_counter()
            stats = QueryStats()
            data = self._metric_data(conn, parsed, tenant, time_ns, time_ns, 0, stats)
            out = evaluate_instant(expr, data, time_ns)
            stats.exec_time = time.perf_counter() - t0
            if isinstance(out, float):
                return ScalarResult(ts=time_ns / 1e9, value=out, stats=stats)
            return VectorResult(samples=out, stats=stats)

        return await self._db.read(run)

    def _iter_rows(
        self,
        conn: sqlite3.Connection,
        plan: _Plan,
        lo: int,
        hi: int,
        *,
        lo_op: str = ">=",
        hi_op: str = "<",
        order: str = "DESC",
        cols: str = "id, stream_id, ts, line, metadata",
        time_ordered: bool = True,
        first_batch: int = 2000,
    ) -> Iterator[list[Any]]:
        """Rows of the plan's streams in the time range, in batches.

        time_ordered: rows come in global time order (`order`), for log queries with a limit.
        One stream, or several without filters: one index range scan per stream, merged in Python
        (each scan stops as soon as the merge has enough). Several streams with filters, when they
        are at least half of the tenant's streams: one scan of the time index, filtering as it
        goes (per-stream scans would each run to the end of a stream that never matches).
        Otherwise (metric queries) rows come stream by stream, ascending in time within each.
        """
        if not plan.stream_ids:
            return
        filters = "".join(
            [" AND instr(line, ?) > 0"] * len(plan.contains)
            + [" AND instr(line, ?) = 0"] * len(plan.not_contains)
        )
        fparams = [*plan.contains, *plan.not_contains]
        if not time_ordered:
            where, params = self._where(plan, lo_op, hi_op)
            cur = conn.execute(
                f"SELECT {cols} FROM entries WHERE {where} ORDER BY stream_id, ts",
                [*params, lo, hi, *fparams],
            )
            while rows := cur.fetchmany(2000):
                yield rows
            return
        filtered = bool(fparams) or not plan.pipeline.is_noop
        if filtered and len(plan.stream_ids) > 1:
            with self._lock:
                tenant_streams = sum(1 for t, _ in self._streams.values() if t == plan.tenant)
            if 2 * len(plan.stream_ids) >= tenant_streams:
                where, params = self._where(plan, lo_op, hi_op)
                cur = conn.execute(
                    f"SELECT {cols} FROM entries INDEXED BY entries_ts WHERE {where} "
                    f"ORDER BY ts {order}, id {order}",
                    [*params, lo, hi, *fparams],
                )
                yield from _growing_batches(cur, first_batch)
                return
        sql = (
            f"SELECT {cols} FROM entries WHERE stream_id = ? AND ts {lo_op} ? AND ts {hi_op} ?"
            f"{filters} ORDER BY ts {order}"
        )
        ts_col = [c.strip() for c in cols.split(",")].index("ts")

        def scan(sid: int) -> Iterator[Any]:
            cur = conn.execute(sql, [sid, lo, hi, *fparams])
            for rows in _growing_batches(cur, 16):
                yield from rows

        if len(plan.stream_ids) == 1:
            merged: Iterator[Any] = scan(plan.stream_ids[0])
        else:
            merged = heapq.merge(
                *(scan(sid) for sid in plan.stream_ids),
                key=operator.itemgetter(ts_col),
                reverse=order == "DESC",
            )
        size = first_batch
        while batch := list(itertools.islice(merged, size)):
            yield batch
            size = min(2000, size * 2)

    def _log_query(
        self,
        conn: sqlite3.Connection,
        q: ast.LogQuery,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        tenant: str,
    ) -> StreamsResult:
        t0 = time.perf_counter()
        plan = self._plan(conn, q, tenant)
        order = "DESC" if direction == Direction.BACKWARD else "ASC"
        out: dict[str, Stream] = {}
        stats = QueryStats()
        n = 0
        # Fetch about `limit` rows first: with a selective filter every extra row fetched is a
        # long scan, and most log queries stop at the first batch.
        for rows in self._iter_rows(
            conn, plan, start_ns, end_ns, order=order, first_batch=max(16, min(limit, 2000))
        ):
            for _id, sid, ts, line, meta in rows:
                stats.lines_processed += 1
                stats.bytes_processed += len(line)
                got = self._apply(plan.pipeline, sid, line, meta)
                if got is None:
                    continue
                new_line, labels = got
                key = _labels_key(labels)
                s = out.get(key)
                if s is None:
                    s = out[key] = Stream(labels=labels)
                s.entries.append(LogEntry(ts=ts, line=new_line, metadata=_meta_dict(meta)))
                n += 1
                if n >= limit:
                    break
            if n >= limit:
                break
        stats.entries_returned = n
        stats.exec_time = time.perf_counter() - t0
        return StreamsResult(streams=list(out.values()), stats=stats)

    def _apply(
        self, pipeline: Pipeline, sid: int, line: str, meta: str | None
    ) -> tuple[str, Labels] | None:
        labels = self._labels_of(sid)
        if meta:
            labels = {**labels, **orjson.loads(meta)}
        if pipeline.is_noop:
            return line, labels
        return pipeline.process(line, labels)

    def _metric_data(
        self,
        conn: sqlite3.Connection,
        parsed: ast.ParsedQuery,
        tenant: str,
        start_ns: int,
        end_ns: int,
        step_ns: int,
        stats: QueryStats,
    ) -> Any:
        needed = _needed_labels(parsed.expr)

        def data(node: ast.RangeAggregation, lo: int, hi: int) -> list[SeriesData]:
            plan = self._plan(conn, node.query, tenant)
            if not plan.fully_pushed:
                return self._per_entry(conn, plan, lo, hi, stats)
            keep = needed.get(id(node))
            # Group by stream alone when every kept label is a stream label; otherwise structured
            # metadata may carry it, and the metadata must be part of the group key.
            with_meta = keep is None or any(
                name not in self._labels_of(sid) for sid in plan.stream_ids for name in keep
            )
            g = bucket_width_ns(node, start_ns, end_ns, step_ns) if step_ns else node.range_ns
            return self._bucketed(conn, plan, node, lo, hi, g, keep, with_meta, stats)

        return data

    def _bucketed(
        self,
        conn: sqlite3.Connection,
        plan: _Plan,
        node: ast.RangeAggregation,
        lo: int,
        hi: int,
        g: int,
        keep: tuple[str, ...] | None,
        with_meta: bool,
        stats: QueryStats,
    ) -> list[SeriesData]:
        """Counts (and bytes) per (stream, bucket) in SQL. Bucket j covers (lo+(j-1)g, lo+jg] and is
        stamped with its upper edge, so every evaluation window is a union of whole buckets."""
        if not plan.stream_ids:
            return []
        need_bytes = node.op in ("bytes_over_time", "bytes_rate")
        where, params = self._where(plan, ">", "<=")
        params = [lo, g, g, *params, lo, hi, *plan.contains, *plan.not_contains]
        size = "sum(length(CAST(line AS BLOB)))" if need_bytes else "0"
        meta_col = "metadata" if with_meta else "NULL"
        group = "stream_id, metadata, b" if with_meta else "stream_id, b"
        cur = conn.execute(
            f"SELECT stream_id, {meta_col}, (ts - ? + ? - 1) / ? AS b, count(*), {size} "
            f"FROM entries WHERE {where} GROUP BY {group}",
            params,
        )
        # Series that differ only in labels the aggregation drops are merged here already.
        by_key: dict[tuple[tuple[str, str], ...], dict[int, list[int]]] = {}
        for sid, meta, b, cnt, nbytes in cur:
            labels = self._labels_of(sid)
            if meta:
                labels = {**labels, **orjson.loads(meta)}
            items = (
                labels.items() if keep is None else ((k, v) for k, v in labels.items() if k in keep)
            )
            key = tuple(sorted(items))
            buckets = by_key.setdefault(key, {})
            acc = buckets.get(b)
            if acc is None:
                buckets[b] = [cnt, nbytes or 0]
            else:
                acc[0] += cnt
                acc[1] += nbytes or 0
            stats.lines_processed += cnt
            stats.bytes_processed += nbytes or 0
        out = []
        for key, buckets in by_key.items():
            bs = sorted(buckets)
            out.append(
                SeriesData(
                    labels=dict(key),
                    ts=[lo + b * g for b in bs],
                    counts=[buckets[b][0] for b in bs],
                    nbytes=[buckets[b][1] for b in bs],
                )
            )
        return out

    def _per_entry(
        self, conn: sqlite3.Connection, plan: _Plan, lo: int, hi: int, stats: QueryStats
    ) -> list[SeriesData]:
        series: dict[str, SeriesData] = {}
        for rows in self._iter_rows(
            conn,
            plan,
            lo,
            hi,
            lo_op=">",
            hi_op="<=",
            order="ASC",
            cols="stream_id, ts, line, metadata",
            time_ordered=False,
        ):
            for sid, ts, line, meta in rows:
                stats.lines_processed += 1
                stats.bytes_processed += len(line)
                got = self._apply(plan.pipeline, sid, line, meta)
                if got is None:
                    continue
                new_line, labels = got
                key = _labels_key(labels)
                s = series.get(key)
                if s is None:
                    s = series[key] = SeriesData(labels=labels, ts=[], counts=[], nbytes=[])
                s.ts.append(ts)
                s.counts.append(1)
                s.nbytes.append(len(new_line.encode("utf-8", "surrogatepass")))
        out = list(series.values())
        for sd in out:
            # Rows come stream by stream; a series fed by several streams needs a sort.
            if any(a > b for a, b in itertools.pairwise(sd.ts)):
                order = sorted(range(len(sd.ts)), key=sd.ts.__getitem__)
                sd.ts = [sd.ts[i] for i in order]
                sd.counts = [sd.counts[i] for i in order]
                sd.nbytes = [sd.nbytes[i] for i in order]
        return out

    # ------------------------------------------------------------------ metadata endpoints

    async def labels(
        self, start_ns: int, end_ns: int, query: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[str]:
        found = await self.series([query] if query else [], start_ns, end_ns, tenant)
        return sorted({k for labels in found for k in labels})

    async def label_values(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        query: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[str]:
        found = await self.series([query] if query else [], start_ns, end_ns, tenant)
        return sorted({labels[name] for labels in found if name in labels})

    async def series(
        self, selectors: Sequence[str], start_ns: int, end_ns: int, tenant: str = DEFAULT_TENANT
    ) -> list[Labels]:
        """Label sets of the streams with entries in [start, end) that match any selector
        (no selector, or `{}`: all streams)."""
        sels: list[ast.Selector] = []
        for text in selectors:
            if text.strip() in ("", "{}"):
                sels = []
                break
            parsed = _parse_cached(text)
            if not isinstance(parsed.expr, ast.LogQuery):
                raise QueryError(f"a series selector must be a stream selector, got {text!r}")
            sels.append(parsed.expr.selector)

        def run(conn: sqlite3.Connection) -> list[Labels]:
            self._refresh_streams(conn)
            if sels:
                ids: set[int] = set()
                for sel in sels:
                    ids.update(self._match_streams(conn, sel, tenant))
            else:
                with self._lock:
                    ids = {sid for sid, (t, _) in self._streams.items() if t == tenant}
            out = []
            for sid in sorted(ids):
                if conn.execute(
                    "SELECT 1 FROM entries WHERE stream_id = ? AND ts >= ? AND ts < ? LIMIT 1",
                    (sid, start_ns, end_ns),
                ).fetchone():
                    out.append(dict(self._labels_of(sid)))
            return out

        return await self._db.read(run)

    # ------------------------------------------------------------------ tail

    def _wake_tails(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def _wait_for_push(self, within: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races with the
            # push that wakes it, and a cancelled tail would then never finish.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await fut
        finally:
            self._waiters.discard(fut)

    async def tail(
        self,
        query: str,
        start_ns: int | None = None,
        *,
        limit: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[TailBatch]:
        """Replay up to `limit` newest entries since `start_ns` (default: 1 h ago), oldest first,
        then follow new entries in the order they were stored.

        Follows the `entries.id` cursor, so no entry is skipped or repeated; when the consumer
        falls more than `tail_buffer` entries behind, the oldest unread are skipped and reported
        in `TailBatch.dropped`."""
        parsed = _parse_cached(query)
        if not isinstance(parsed.expr, ast.LogQuery):
            raise QueryError("tail needs a log query (a stream selector and filters), not a metric")
        log_q = parsed.expr
        now = self._clock()
        start = now - 3600 * 1_000_000_000 if start_ns is None else start_ns

        def first(conn: sqlite3.Connection) -> tuple[int, list[Stream]]:
            (max_id,) = conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()
            if limit <= 0:
                return int(max_id), []
            end = now + FUTURE_GRACE_NS
            res = self._log_query(conn, log_q, start, end, limit, Direction.BACKWARD, tenant)
            return int(max_id), res.streams

        group, sub, joined_at = self._tail_hub.join(
            (tenant, query), lambda: _GroupPlan(log_q, tenant), self.tail_buffer
        )
        try:
            cursor, backfill = await self._db.read(first)
            # The first subscriber sets where the hub starts reading; the others joined at the
            # hub's cursor (every batch offered to them from then on lies above it).
            started_at = self._tail_hub.start(cursor)
            if joined_at is None:
                joined_at = started_at
            entries = [TailEntry(s.labels, e) for s in backfill for e in s.entries]
            entries.sort(key=lambda te: te.entry.ts)
            if entries:
                yield TailBatch(entries=entries)
            # The hub was further on than our backfill: read the entries in between ourselves.
            while cursor < joined_at:
                step = functools.partial(
                    self._hub_read, cursor=cursor, groups=[group], upto=joined_at
                )
                cursor, shares = await self._db.read(step)
                for _, sb in shares:
                    yield sb.batch
            sub.skip_upto = cursor
            while True:
                yield await sub.next()
        finally:
            await self._tail_hub.leave(group, sub)

    def _group_streams(self, plan: _GroupPlan) -> frozenset[int]:
        """The streams a tail group follows (matched again only when new streams appeared)."""
        if plan.streams_at != self._max_stream_id:
            plan.streams = frozenset(self._matching(plan.query.selector, plan.tenant))
            plan.streams_at = self._max_stream_id
        return plan.streams

    def _hub_read(
        self,
        conn: sqlite3.Connection,
        cursor: int,
        groups: list[TailGroup],
        upto: int | None = None,
    ) -> tuple[int, list[tuple[TailGroup, SharedBatch]]]:
        """One round of the tail hub: the entries stored after `cursor` (up to id `upto`; at most
        TAIL_BATCH), read once and split among `groups` through their queries."""
        self._refresh_streams(conn)
        (max_id,) = conn.execute("SELECT coalesce(max(id), 0) FROM entries").fetchone()
        if upto is not None:
            max_id = min(max_id, upto)
        if max_id <= cursor:
            return cursor, []
        lo = cursor
        streams = {g: self._group_streams(g.plan) for g in groups}
        skipped: dict[TailGroup, tuple[int, int | None, int | None]] = {}
        if max_id - cursor > self.tail_buffer:
            # Further behind than the buffer: skip the oldest, and tell each group how many of
            # its entries (and between which times) it will not see.
            skip_to = max_id - self.tail_buffer
            counts = conn.execute(
                "SELECT stream_id, count(*), min(ts), max(ts) FROM entries "
                "WHERE id > ? AND id <= ? GROUP BY stream_id",
                (cursor, skip_to),
            ).fetchall()
            for g in groups:
                mine = [c for c in counts if c[0] in streams[g]]
                if mine:
                    skipped[g] = (
                        sum(c[1] for c in mine),
                        min(c[2] for c in mine),
                        max(c[3] for c in mine),
                    )
            cursor = skip_to
        # Only the streams some tail follows come back (a few selective tails beside a busy
        # fleet should not pull every line into Python); `+stream_id`: walk the id range.
        followed = sorted(frozenset().union(*streams.values()))
        rows = conn.execute(
            "SELECT id, stream_id, ts, line, metadata FROM entries WHERE id > ? AND id <= ? "
            "AND +stream_id IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
            (cursor, max_id, orjson.dumps(followed).decode(), TAIL_BATCH),
        ).fetchall()
        # Fewer rows than asked: none of ours is left below max_id, so the cursor jumps there.
        new_cursor = max_id if len(rows) < TAIL_BATCH else rows[-1][0]
        by_stream: dict[int, list[Any]] = {}
        for row in rows:
            by_stream.setdefault(row[1], []).append(row)
        shares: list[tuple[TailGroup, SharedBatch]] = []
        for g in groups:
            plan: _GroupPlan = g.plan
            parts = [by_stream[sid] for sid in by_stream.keys() & streams[g]]
            mine = parts[0] if len(parts) == 1 else sorted(itertools.chain(*parts))
            batch = TailBatch(entries=[])
            batch.dropped, batch.dropped_from, batch.dropped_to = skipped.get(g, (0, None, None))
            ids: list[int] = []
            for id_, sid, ts, line, meta in mine:
                got = self._apply(plan.pipeline, sid, line, meta)
                if got is not None:
                    batch.entries.append(TailEntry(got[1], LogEntry(ts, got[0], _meta_dict(meta))))
                    ids.append(id_)
            if batch.entries or batch.dropped:
                shares.append((g, SharedBatch(lo, new_cursor, ids, batch)))
        return new_cursor, shares

    # ------------------------------------------------------------------ line index

    @staticmethod
    def _index_where(
        tenant: str, kind: int, lo: int, hi: int, agent: str | None, run_id: str | None
    ) -> tuple[str, list[Any]]:
        where = "tenant = ? AND kind = ? AND ts >= ? AND ts < ?"
        params: list[Any] = [tenant, kind, lo, hi]
        if agent:
            where += " AND agent = ?"
            params.append(agent)
        if run_id:
            where += " AND run_id = ?"
            params.append(run_id)
        return where, params

    async def index_rows(
        self,
        kind: int,
        lo: int,
        hi: int,
        *,
        agent: str | None = None,
        run_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[tuple[int, str, str, str, int]]:
        """(ts, run id, agent, key, entry id) of indexed lines of `kind` in [lo, hi), by time."""
        where, params = self._index_where(tenant, kind, lo, hi, agent, run_id)
        sql = f"SELECT ts, run_id, agent, key, entry_id FROM line_index WHERE {where} ORDER BY ts"
        return await self._db.read(lambda c: c.execute(sql, params).fetchall())

    async def index_groups(
        self,
        kind: int,
        lo: int,
        hi: int,
        *,
        min_count: int,
        agent: str | None = None,
        run_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[tuple[str, str, str, int, int, int]]:
        """(run id, agent, key, count, newest ts, newest entry id) of each (run, key) seen at
        least `min_count` times in [lo, hi): identical tool calls, for loop detection."""
        where, params = self._index_where(tenant, kind, lo, hi, agent, run_id)
        sql = (
            "SELECT run_id, max(agent), key, count(*), max(ts), max(entry_id) FROM line_index "
            f"WHERE {where} GROUP BY run_id, key HAVING count(*) >= ?"
        )
        return await self._db.read(lambda c: c.execute(sql, [*params, min_count]).fetchall())

    async def lines_by_id(self, ids: Sequence[int]) -> dict[int, str]:
        """The stored lines of these entry ids (those still kept)."""
        if not ids:
            return {}
        sql = "SELECT id, line FROM entries WHERE id IN (SELECT value FROM json_each(?))"
        arg = orjson.dumps(list(ids)).decode()
        return await self._db.read(lambda c: dict(c.execute(sql, (arg,)).fetchall()))

    # ------------------------------------------------------------------ health

    async def health(self) -> SourceHealth:
        t0 = time.perf_counter()
        try:
            await self._db.read(lambda c: c.execute("SELECT 1").fetchone())
        except Exception as exc:  # a health probe reports, never raises
            if not self._last_error:
                self._healthy_since = self._clock()
            self._last_error = str(exc)
            return SourceHealth(
                name="logs",
                kind="embedded",
                state=HealthState.DOWN,
                detail=str(self.path),
                reason=str(exc),
                since=self._healthy_since,
            )
        if self._last_error:
            self._last_error = ""
            self._healthy_since = self._clock()
        return SourceHealth(
            name="logs",
            kind="embedded",
            state=HealthState.OK,
            detail=str(self.path),
            since=self._healthy_since,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    async def size_bytes(self) -> int:
        """Bytes on disk of the store (database, WAL and shared-memory files)."""

        def measure() -> int:
            total = 0
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    total += Path(str(self.path) + suffix).stat().st_size
            return total

        return await asyncio.to_thread(measure)


# ---------------------------------------------------------------------- helpers


def _growing_batches(cur: sqlite3.Cursor, first: int) -> Iterator[list[Any]]:
    """fetchmany in batches that start at `first` and double up to 2000: a caller that stops
    early does not pay for scanning far past what it needed."""
    size = first
    while rows := cur.fetchmany(size):
        yield rows
        size = min(2000, size * 2)


def _meta_dict(meta: str | None) -> Labels:
    return orjson.loads(meta) if meta else {}


def _check_limit(limit: int) -> None:
    if limit <= 0:
        raise QueryError("limit must be a positive value")
    if limit > MAX_LIMIT:
        raise QueryError(
            f"max entries limit per query exceeded, limit > max_entries_limit_per_query "
            f"({limit} > {MAX_LIMIT})"
        )


def _invalid_labels(labels: Labels) -> str:
    if not labels:
        return "error at least one label pair is required per stream"
    if len(labels) > MAX_LABELS:
        return f"stream has {len(labels)} label names, the limit is {MAX_LABELS}"
    for k, v in labels.items():
        if (
            not k
            or not (k[0].isalpha() or k[0] == "_")
            or not all(c.isalnum() or c == "_" for c in k)
            or not k.isascii()
        ):
            return f"invalid label name {k!r}: use letters, digits and underscores"
        if len(v) > 2048:
            return f"label {k} value is longer than 2048 characters"
    return ""


def _needed_labels(expr: ast.Expr) -> dict[int, tuple[str, ...] | None]:
    """For each range aggregation (by id()), the labels its result is finally grouped by:
    a tuple when an enclosing `by (...)` aggregation keeps only those, None when all labels
    matter (no enclosing aggregation, `without`, or topk/bottomk which keep the full label set)."""
    out: dict[int, tuple[str, ...] | None] = {}

    def walk(e: ast.Expr, keep: tuple[str, ...] | None) -> None:
        if isinstance(e, ast.RangeAggregation):
            out[id(e)] = keep
        elif isinstance(e, ast.VectorAggregation):  # the innermost `by` decides
            inner_keep: tuple[str, ...] | None
            if e.op in ("topk", "bottomk"):
                inner_keep = None  # they keep the full label sets of what they select
            elif e.grouping is None:
                inner_keep = ()
            elif not e.grouping.without:
                inner_keep = tuple(e.grouping.labels)
            else:
                inner_keep = None
            walk(e.inner, inner_keep)
        elif isinstance(e, ast.BinaryOp):
            walk(e.left, keep)
            walk(e.right, keep)

    walk(expr, None)
    return out
