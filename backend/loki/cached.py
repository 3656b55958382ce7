"""`CachedLogSource`: a LogSource that keeps the results of another one in a `ports.Cache` (the
memory LRU, or the memory LRU in front of Redis), shared by every instance on the same Redis.

What is cached: query_range, query_instant, labels, label_values and series. push and tail pass
through untouched.

Keys: `logq:v1:<kind>:<tenant>:<digest>` where the digest covers the query normalised by parsing
it (the syntax tree, so spacing, comments and quoting style do not matter; a query outside the
parser's subset is normalised by collapsing whitespace outside strings), the aligned range, and
for log queries the limit and direction (metric results depend on neither).

Alignment, chosen so that answers stay right:

- Log queries: the range sent upstream is widened to whole seconds, and the answer is cut back to
  the exact [start, end) asked. If the widening could have changed which entries the limit kept
  (the limit was reached and some entries fell in the padding), the exact range is asked instead,
  so a cached answer is never a wrong one. Callers asking every refresh for "the last N minutes"
  thus share one entry per second.
- Metric range queries: the step is fixed first (Loki's default when none is given), then start
  and end are aligned down to multiples of it (what Loki's and Cortex's frontends do with
  `align_queries_with_step`: sample times fall on the step grid, so every refresh shares the
  samples). `align_metric_queries=False` keeps the caller's exact range.
- Instant queries: `time` is aligned down to the second. Labels, label values and series: the
  range is widened to whole seconds (Loki's own answers there are approximate and may come from
  a wider window).

Lifetimes: a range wholly in the past (ending more than `settle_s` ago) lives `past_ttl` (1 h);
one touching now lives `recent_ttl` (10 s). Identical concurrent calls make one upstream call
(`get_or_compute` single-flight). Results are stored with orjson in a compact form that decodes to
the same dataclasses (NaN and infinities included).

Stale answers: every fresh result is also kept under a "last good" key for `stale_ttl` (1 day).
When the inner source fails with `ServiceUnavailable`, the last good answer is served instead,
and marked stale: `last_served_stale` (this instance's latest call), `served_stale()` (the latest
call made from the caller's own task/context, safe under concurrency), and `stale_served` (a
count). `health()` then says DEGRADED ("serving cached results, marked stale") instead of DOWN.
Other errors (a bad query: `QueryError`) are never cached and never answered from the cache.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

import orjson

from ..cache import get_or_compute
from ..errors import AgentlogError, ServiceUnavailable
from ..logql.parser import parse
from ..models import (
    DEFAULT_TENANT,
    CacheStats,
    Direction,
    HealthState,
    Labels,
    LogEntry,
    MatrixResult,
    MatrixSeries,
    PushResult,
    QueryResult,
    QueryStats,
    ScalarResult,
    SourceHealth,
    Stream,
    StreamsResult,
    TailBatch,
    VectorResult,
    VectorSample,
)
from ..ports import Cache, LogSource
from .client import default_step_ns, is_log_query

__all__ = ["CachedLogSource", "decode_result", "encode_result", "normalize_query", "served_stale"]

NS: Final = 1_000_000_000
KEY_PREFIX: Final = "logq:v1:"
STALE_PREFIX: Final = "logq:v1:stale:"

T = TypeVar("T")

_served_stale: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "agentlog_served_stale", default=False
)


def served_stale() -> bool:
    """Whether the latest cached-source call made in this task (context) was answered with a
    stale result. Read it right after awaiting the call, in the same task."""
    return _served_stale.get()


# ---------------------------------------------------------------------- keys

_STRING_OR_SPACE = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|\s+', re.S)


def normalize_query(query: str) -> str:
    """A canonical form of a LogQL query: its syntax tree, or (outside the parser's subset) the
    text with whitespace outside strings collapsed."""
    try:
        return repr(parse(query).expr)
    except AgentlogError:
        return _STRING_OR_SPACE.sub(lambda m: " " if m.group(0).isspace() else m.group(0), query)


def _digest(parts: Sequence[object]) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).hexdigest()


def _floor(ns: int, unit: int) -> int:
    return ns // unit * unit


def _ceil(ns: int, unit: int) -> int:
    return -(-ns // unit) * unit


# ---------------------------------------------------------------------- codec


def _f(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)  # orjson writes NaN/inf as null: keep them


def _st(s: QueryStats) -> list[float | int]:
    return [s.exec_time, s.lines_processed, s.bytes_processed, s.entries_returned]


def _stats(raw: list[Any]) -> QueryStats:
    return QueryStats(float(raw[0]), int(raw[1]), int(raw[2]), int(raw[3]))


def encode_result(res: QueryResult) -> bytes:
    """A result as compact JSON (see `decode_result`)."""
    if isinstance(res, StreamsResult):
        body: dict[str, Any] = {
            "t": "streams",
            "s": [[s.labels, [[e.ts, e.line, e.metadata] for e in s.entries]] for s in res.streams],
        }
    elif isinstance(res, MatrixResult):
        body = {
            "t": "matrix",
            "s": [[s.metric, [[_f(t), _f(v)] for t, v in s.values]] for s in res.series],
        }
    elif isinstance(res, VectorResult):
        body = {"t": "vector", "s": [[s.metric, _f(s.ts), _f(s.value)] for s in res.samples]}
    else:
        body = {"t": "scalar", "ts": _f(res.ts), "v": _f(res.value)}
    body["st"] = _st(res.stats)
    return orjson.dumps(body)


def decode_result(raw: bytes) -> QueryResult:
    """The dataclasses `encode_result` was given, equal field for field."""
    body = orjson.loads(raw)
    kind = body["t"]
    stats = _stats(body["st"])
    if kind == "streams":
        return StreamsResult(
            [Stream(labels, [LogEntry(*e) for e in entries]) for labels, entries in body["s"]],
            stats,
        )
    if kind == "matrix":
        return MatrixResult(
            [
                MatrixSeries(metric, [(float(t), float(v)) for t, v in values])
                for metric, values in body["s"]
            ],
            stats,
        )
    if kind == "vector":
        return VectorResult(
            [VectorSample(m, float(ts), float(v)) for m, ts, v in body["s"]],
            stats,
        )
    if kind == "scalar":
        return ScalarResult(float(body["ts"]), float(body["v"]), stats)
    raise ValueError(f"unknown cached result type {kind!r}")


def _encode_json(value: object) -> bytes:
    return orjson.dumps(value)


def _decode_strs(raw: bytes) -> list[str]:
    return [str(x) for x in orjson.loads(raw)]


def _decode_labels(raw: bytes) -> list[Labels]:
    return [dict(x) for x in orjson.loads(raw)]


class _Uncacheable(Exception):
    """A result that could not be encoded: handed to every caller, cached nowhere."""

    def __init__(self, result: object) -> None:
        super().__init__("result not cacheable")
        self.result = result


def _clip(res: StreamsResult, start_ns: int, end_ns: int) -> tuple[StreamsResult, int, int]:
    """The entries of `res` in [start, end); also how many there were and how many went."""
    streams = []
    total = removed = 0
    for s in res.streams:
        kept = [e for e in s.entries if start_ns <= e.ts < end_ns]
        total += len(s.entries)
        removed += len(s.entries) - len(kept)
        if kept:
            streams.append(Stream(s.labels, kept))
    if not removed:
        return res, total, 0
    st = res.stats
    stats = QueryStats(st.exec_time, st.lines_processed, st.bytes_processed, total - removed)
    return StreamsResult(streams, stats), total, removed


# ---------------------------------------------------------------------- the wrapper


class CachedLogSource:
    """ports.LogSource caching another LogSource's answers in `cache` (see the module doc).

    `now`: the wall clock (ns) that decides whether a range is in the past.
    """

    def __init__(
        self,
        inner: LogSource,
        cache: Cache,
        *,
        now: Callable[[], int] = time.time_ns,
        past_ttl: float = 3600.0,
        recent_ttl: float = 10.0,
        stale_ttl: float = 86400.0,
        settle_s: float = 60.0,
        align_metric_queries: bool = True,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self._now = now
        self.past_ttl = past_ttl
        self.recent_ttl = recent_ttl
        self.stale_ttl = stale_ttl
        self.settle_ns = int(settle_s * NS)
        self.align_metric_queries = align_metric_queries
        self.upstream_calls = 0  # calls that reached the inner source
        self.stale_served = 0
        self.last_served_stale = False
        self._last_good_kept = 0

    @property
    def max_entries_per_query(self) -> int:
        value = getattr(self.inner, "max_entries_per_query", 5000)
        return int(value)

    # ------------------------------------------------------------------ core

    def _ttl(self, end_ns: int) -> float:
        return self.past_ttl if end_ns <= self._now() - self.settle_ns else self.recent_ttl

    async def _cached(
        self,
        key: str,
        ttl: float,
        call: Callable[[], Awaitable[T]],
        encode: Callable[[T], bytes],
        decode: Callable[[bytes], T],
    ) -> T:
        stale_key = STALE_PREFIX + key[len(KEY_PREFIX) :]

        fresh: list[T] = []

        async def compute() -> bytes:
            self.upstream_calls += 1
            value = await call()
            try:
                raw = encode(value)
            except (TypeError, orjson.JSONEncodeError):
                raise _Uncacheable(value) from None
            await self.cache.set(stale_key, raw, self.stale_ttl)
            self._last_good_kept += 1
            fresh.append(value)
            return raw

        stale = False
        try:
            raw = await get_or_compute(self.cache, key, compute, ttl)
            if fresh:  # this call computed it: no need to decode what it just encoded
                self._mark(False)
                return fresh[0]
        except _Uncacheable as exc:
            self._mark(False)
            return cast(T, exc.result)
        except ServiceUnavailable:
            kept = await self.cache.get(stale_key)
            if kept is None:
                self._mark(False)
                raise
            raw, stale = kept, True
            self.stale_served += 1
        self._mark(stale)
        try:
            return decode(raw)
        except (ValueError, KeyError, TypeError, IndexError):
            # A value this version cannot read (another version's format, damage): drop it.
            await self.cache.delete(key)
            self._mark(False)
            return await call()

    def _mark(self, stale: bool) -> None:
        self.last_served_stale = stale
        _served_stale.set(stale)

    # ------------------------------------------------------------------ LogSource

    async def push(self, streams: Sequence[Stream], tenant: str = DEFAULT_TENANT) -> PushResult:
        return await self.inner.push(streams, tenant)

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
        norm = normalize_query(query)
        if not is_log_query(query):
            step = step_ns if step_ns is not None else default_step_ns(start_ns, end_ns)
            lo, hi = start_ns, end_ns
            if self.align_metric_queries and step > 0:
                lo, hi = _floor(start_ns, step), _floor(end_ns, step)
            key = f"{KEY_PREFIX}matrix:{tenant}:{_digest([norm, lo, hi, step])}"
            return await self._cached(
                key,
                self._ttl(hi),
                lambda: self.inner.query_range(
                    query, lo, hi, limit=limit, direction=direction, step_ns=step, tenant=tenant
                ),
                encode_result,
                decode_result,
            )
        lo, hi = _floor(start_ns, NS), _ceil(end_ns, NS)
        res = await self._log_range(query, norm, lo, hi, limit, direction, tenant)
        if (lo, hi) == (start_ns, end_ns) or not isinstance(res, StreamsResult):
            return res
        clipped, total, removed = _clip(res, start_ns, end_ns)
        if removed and total >= limit:
            # The padding took some of the `limit`: only the exact range gives the right answer.
            return await self._log_range(query, norm, start_ns, end_ns, limit, direction, tenant)
        return clipped

    async def _log_range(
        self,
        query: str,
        norm: str,
        lo: int,
        hi: int,
        limit: int,
        direction: Direction,
        tenant: str,
    ) -> QueryResult:
        key = f"{KEY_PREFIX}logs:{tenant}:{_digest([norm, lo, hi, limit, direction.value])}"
        return await self._cached(
            key,
            self._ttl(hi),
            lambda: self.inner.query_range(
                query, lo, hi, limit=limit, direction=direction, tenant=tenant
            ),
            encode_result,
            decode_result,
        )

    async def query_instant(
        self,
        query: str,
        time_ns: int,
        *,
        limit: int = 100,
        direction: Direction = Direction.BACKWARD,
        tenant: str = DEFAULT_TENANT,
    ) -> QueryResult:
        at = _floor(time_ns, NS)
        parts: list[object] = [normalize_query(query), at]
        if is_log_query(query):
            parts += [limit, direction.value]
        key = f"{KEY_PREFIX}instant:{tenant}:{_digest(parts)}"
        return await self._cached(
            key,
            self._ttl(at),
            lambda: self.inner.query_instant(
                query, at, limit=limit, direction=direction, tenant=tenant
            ),
            encode_result,
            decode_result,
        )

    async def labels(
        self, start_ns: int, end_ns: int, query: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[str]:
        lo, hi = _floor(start_ns, NS), _ceil(end_ns, NS)
        norm = normalize_query(query) if query else ""
        key = f"{KEY_PREFIX}labels:{tenant}:{_digest([norm, lo, hi])}"
        return await self._cached(
            key,
            self._ttl(hi),
            lambda: self.inner.labels(lo, hi, query, tenant),
            _encode_json,
            _decode_strs,
        )

    async def label_values(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        query: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[str]:
        lo, hi = _floor(start_ns, NS), _ceil(end_ns, NS)
        norm = normalize_query(query) if query else ""
        key = f"{KEY_PREFIX}values:{tenant}:{_digest([name, norm, lo, hi])}"
        return await self._cached(
            key,
            self._ttl(hi),
            lambda: self.inner.label_values(name, lo, hi, query, tenant),
            _encode_json,
            _decode_strs,
        )

    async def series(
        self, selectors: Sequence[str], start_ns: int, end_ns: int, tenant: str = DEFAULT_TENANT
    ) -> list[Labels]:
        lo, hi = _floor(start_ns, NS), _ceil(end_ns, NS)
        norms = sorted({"{}" if s.strip() in ("", "{}") else normalize_query(s) for s in selectors})
        key = f"{KEY_PREFIX}series:{tenant}:{_digest([norms, lo, hi])}"
        sels = list(selectors)
        return await self._cached(
            key,
            self._ttl(hi),
            lambda: self.inner.series(sels, lo, hi, tenant),
            _encode_json,
            _decode_labels,
        )

    def tail(
        self,
        query: str,
        start_ns: int | None = None,
        *,
        limit: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[TailBatch]:
        return self.inner.tail(query, start_ns, limit=limit, tenant=tenant)

    async def health(self) -> SourceHealth:
        """The inner source's health; while it is down, DEGRADED if previous answers are kept
        (they are served, marked stale)."""
        h = await self.inner.health()
        if h.state == HealthState.DOWN and (self._last_good_kept or self.stale_served):
            h.state = HealthState.DEGRADED
            h.reason = (
                f"{h.reason}; serving cached results (marked stale) where a previous answer exists"
            )
        return h

    async def stats(self) -> list[CacheStats]:
        """The cache's statistics, one entry per level."""
        return await self.cache.stats()

    async def close(self) -> None:
        """Closes the inner source. The cache belongs to whoever made it (often shared)."""
        await self.inner.close()
