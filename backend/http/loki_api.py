"""The Loki-compatible HTTP API of the embedded store (../shared/reference/loki-http-api.md).

Endpoints: push (`/loki/api/v1/push`, legacy `/api/prom/push`), `query_range`, `query`,
`labels` (alias `label`), `label/{name}/values`, `series`, `tail` (WebSocket), `/ready`,
`status/buildinfo`, `index/stats` and `format_query`. Parameters, defaults, time formats, result
shapes, statuses and plain-text error bodies follow Loki (sections 1-3 of the reference).

Decisions where the reference leaves room:

- Auth (auth.py, applied to the whole router by `create_app`): pushes need an operator, the other
  routes a viewer, `/ready` nothing. With auth on, the tenant is the token's or API key's.
- Tenants with auth off: `X-Scope-OrgID` picks the tenant; without it the tenant is
  `embedded.tenant_default` (`fake`, as Loki with auth off).
  IDs are validated as Loki does (letters, digits and ``!-_.*'()``, at most 150 bytes, never `.` or
  `..`); `t1|t2` is refused (multi-tenant queries are off by default in Loki too).
- Push does not add `service_name` or `detected_level`: the lines come back exactly as pushed, and
  a filled-in `service_name` would shadow the `agent` field of the line in the task table.
- A partial failure answers 400 with one `entry with timestamp <Go time> ignored, reason: '<why>',`
  line per rejected entry (the first 10, as Loki's `max_returned_errors`), then
  `user '<tenant>', total ignored: X out of Y`.
- `X-Loki-Response-Encoding-Flags: categorize-labels`: the store merges stream labels, structured
  metadata and parsed labels into one set, so the indexed labels of each result are found by
  matching it against the stream label sets of the query's selector (`series`); where two stream
  label sets both fit, the larger wins.
- Tail `dropped_entries`: the store reports how many entries a slow reader missed and their time
  bounds; their labels and timestamps are read back from the store (they are still there), up to
  1000 per frame as Loki. `delay_for` holds each frame until that many seconds after it arrived.
- `index/stats` is an estimate from the selector alone: matching streams (`chunks` = streams),
  and `sum(count_over_time)` / `sum(bytes_over_time)` over the whole range.
- Loki HTML-escapes `<`, `>` and `&` inside JSON strings (`\\u003c`); so does this API.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response, WebSocket
from fastapi.responses import PlainTextResponse
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from .. import __version__
from ..errors import (
    AgentlogError,
    NotFound,
    QueryError,
    ServiceUnavailable,
    UsageError,
)
from ..facade import Backend
from ..logql import ast
from ..logql.parser import parse
from ..logql.strings import quote
from ..logql.timefmt import NS_PER_SECOND, format_duration, parse_duration, parse_step, parse_time
from ..models import (
    Direction,
    HealthState,
    Labels,
    LogEntry,
    MatrixResult,
    QueryResult,
    QueryStats,
    RejectedEntry,
    ScalarResult,
    Stream,
    StreamsResult,
    TailBatch,
    TailEntry,
    VectorResult,
)
from .app import AppContext, context_of
from .auth import identity_of
from .push_decode import PushBodyError, decode_body
from .wstail import Frame, TailSession, close_reason, tail_slot

__all__ = ["LOKI_VERSION", "router"]

LOKI_VERSION = "3.5.0"  # the Loki version reported by buildinfo (the API follows 3.x)
DEFAULT_SINCE_NS = 3600 * NS_PER_SECOND
DEFAULT_LIMIT = 100
TAIL_FRAME_ENTRIES = 100
TAIL_BUFFERED_FRAMES = 10
MAX_DROPPED_PER_FRAME = 1000
MAX_DELAY_FOR = 5
MAX_RETURNED_ERRORS = 10
DECODE_IN_THREAD_BYTES = 512 * 1024  # bigger push bodies are decoded off the event loop
CATEGORIZE = "categorize-labels"
FLAGS_HEADER = "x-loki-response-encoding-flags"


# ---------------------------------------------------------------------- errors as plain text


def _plain(status: int, text: str) -> PlainTextResponse:
    return PlainTextResponse(text, status_code=status)


def error_response(exc: Exception) -> PlainTextResponse | None:
    """Loki's status and plain-text body for an error, or None for an unexpected one."""
    if isinstance(exc, PushBodyError):
        return _plain(exc.status, str(exc))
    if isinstance(exc, UsageError):  # QueryError, LogQLSyntaxError, LogQLUnsupportedError
        return _plain(400, str(exc))
    if isinstance(exc, NotFound):
        return _plain(404, str(exc))
    if isinstance(exc, ServiceUnavailable):
        return _plain(503, str(exc))
    if isinstance(exc, AgentlogError):  # StorageError and the rest: internal
        return _plain(500, str(exc))
    return None


class LokiRoute(APIRoute):
    """Errors of these routes are answered as Loki does: a status and a plain-text body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except (AgentlogError, PushBodyError) as exc:
                resp = error_response(exc)
                assert resp is not None
                return resp

        return route


router = APIRouter(route_class=LokiRoute, tags=["loki"])


# ---------------------------------------------------------------------- request helpers


class Params:
    """Request parameters: a POST form body first (Go's r.Form order), then the URL query."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items = items

    def get(self, name: str) -> str | None:
        for k, v in self.items:
            if k == name:
                return v
        return None

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self.items if k == name]


async def params_of(request: Request) -> Params:
    items: list[tuple[str, str]] = []
    if request.method == "POST":
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            body = await request.body()
            items = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    items.extend(request.query_params.multi_items())
    return Params(items)


_TENANT_OK = re.compile(r"[A-Za-z0-9!\-_.*'()]+")
MAX_TENANT_BYTES = 150


def tenant_of(conn: HTTPConnection) -> str:
    """The tenant of a request. With auth on, the caller's token or API key's (auth.py refuses an
    `X-Scope-OrgID` naming another one). With auth off: `X-Scope-OrgID`, validated as Loki does;
    without it, the configured default (`embedded.tenant_default`, `fake` as in Loki)."""
    ident = identity_of(conn)
    if ident is not None and ident.method != "none":
        return ident.tenant
    raw = conn.headers.get("x-scope-orgid", "")
    if not raw:
        return context_of(conn).default_tenant
    if "|" in raw:
        raise QueryError(
            "multiple org IDs present: multi-tenant queries are not enabled on this server"
        )
    if len(raw.encode()) > MAX_TENANT_BYTES:
        raise QueryError(f"tenant ID is too long: max {MAX_TENANT_BYTES} characters")
    if raw in (".", ".."):
        raise QueryError("tenant ID is '.' or '..'")
    if not _TENANT_OK.fullmatch(raw):
        bad = next(c for c in raw if not _TENANT_OK.fullmatch(c))
        raise QueryError(f"tenant ID '{raw}' contains unsupported character '{bad}'")
    return raw


_FLOAT = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


def _seconds_or_duration(value: str, name: str) -> int:
    """Loki's parseSecondsOrDuration: a float number of seconds or a Prometheus duration."""
    if _FLOAT.fullmatch(value):
        seconds = float(value)
        if not math.isfinite(seconds) or abs(seconds) * NS_PER_SECOND > 2**63 - 1:
            raise QueryError(f"{name}: cannot parse {value!r} to a valid duration")
        return round(seconds * NS_PER_SECOND)
    try:
        return parse_duration(value)
    except QueryError:
        raise QueryError(f"{name}: cannot parse {value!r} to a valid duration") from None


def _time(p: Params, name: str, default: int) -> int:
    try:
        return parse_time(p.get(name), default)
    except QueryError as exc:
        raise QueryError(f"{name}: {exc}") from None


def _bounds(p: Params, now: int) -> tuple[int, int]:
    """start, end: end defaults to now; start to min(end, now) - since (since: 1h)."""
    since = DEFAULT_SINCE_NS
    if raw := p.get("since"):
        since = _seconds_or_duration(raw, "since")
    end = _time(p, "end", now)
    start = _time(p, "start", min(end, now) - since)
    return start, end


def _limit(p: Params) -> int:
    raw = p.get("limit")
    if not raw:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"limit: cannot parse {raw!r} as an integer") from None
    if value <= 0:
        raise QueryError("limit must be a positive value")
    return value


def _direction(p: Params) -> Direction:
    raw = p.get("direction")
    if not raw:
        return Direction.BACKWARD
    try:
        return Direction(raw.lower())
    except ValueError:
        raise QueryError(f"invalid direction '{raw}'") from None


def _flags(conn: HTTPConnection) -> list[str] | None:
    """The encoding flags sent, verbatim (split on commas, not trimmed), or None."""
    raw = conn.headers.get(FLAGS_HEADER)
    return None if not raw else raw.split(",")


_HTML = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))


def dumps(obj: object) -> bytes:
    """JSON as Loki writes it: `<`, `>` and `&` escaped (they only occur inside strings)."""
    body = orjson.dumps(obj)
    for raw, esc in _HTML:
        if raw in body:
            body = body.replace(raw, esc)
    return body


def _json(obj: object, status: int = 200) -> Response:
    return Response(dumps(obj), status_code=status, media_type="application/json")


# ---------------------------------------------------------------------- result encoding


def fmt_time(seconds: float) -> int | float:
    """Unix seconds as Loki writes sample times: a number, at most millisecond precision."""
    ms = round(seconds * 1000)
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def fmt_value(v: float) -> str:
    """A sample value as Prometheus writes it (FormatFloat 'f', -1): no exponent, NaN, +Inf."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    text = repr(v)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _stats(st: QueryStats) -> dict[str, Any]:
    t = st.exec_time
    return {
        "summary": {
            "bytesProcessedPerSecond": int(st.bytes_processed / t) if t > 0 else 0,
            "linesProcessedPerSecond": int(st.lines_processed / t) if t > 0 else 0,
            "totalBytesProcessed": st.bytes_processed,
            "totalLinesProcessed": st.lines_processed,
            "totalEntriesReturned": st.entries_returned,
            "execTime": t,
            "queueTime": 0,
            "subqueries": 0,
            "splits": 0,
            "shards": 0,
        }
    }


class Categorizer:
    """Splits the merged label set of a result entry into indexed labels, structured metadata and
    parsed labels, using the stream label sets the selector matches (see module doc)."""

    def __init__(self, label_sets: Iterable[Labels]) -> None:
        self.sets: list[Labels] = []
        self._known: set[tuple[tuple[str, str], ...]] = set()
        self.add(label_sets)

    def add(self, label_sets: Iterable[Labels]) -> None:
        for s in label_sets:
            key = tuple(sorted(s.items()))
            if key not in self._known:
                self._known.add(key)
                self.sets.append(s)
        self.sets.sort(key=len, reverse=True)

    def indexed(self, labels: Labels, meta: Labels) -> Labels | None:
        for s in self.sets:
            if all(labels.get(k) == v or k in meta for k, v in s.items()):
                return s
        return None

    def split(self, labels: Labels, meta: Labels) -> tuple[Labels, dict[str, Labels]]:
        idx = self.indexed(labels, meta)
        if idx is None:
            idx = {k: v for k, v in labels.items() if k not in meta}
        parsed = {k: v for k, v in labels.items() if k not in idx and k not in meta}
        extra: dict[str, Labels] = {}
        if meta:
            extra["structuredMetadata"] = meta
        if parsed:
            extra["parsed"] = parsed
        return idx, extra


def selector_text(query: str) -> str | None:
    """The stream selector of a log query, as LogQL text (None for a metric query)."""
    expr = parse(query).expr
    if not isinstance(expr, ast.LogQuery):
        return None
    return _selector(expr.selector)


def _selector(sel: ast.Selector) -> str:
    return "{" + ", ".join(f"{m.name}{m.op}{quote(m.value)}" for m in sel.matchers) + "}"


def _entries_json(
    entries: Sequence[TailEntry], cat: Categorizer | None, direction: Direction | None
) -> list[dict[str, Any]]:
    """Streams of `{"stream":..., "values":[...]}`; with a categorizer, grouped by indexed labels
    and each value carrying its metadata and parsed labels."""
    groups: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    multi: set[tuple[tuple[str, str], ...]] = set()
    for te in entries:
        e = te.entry
        if cat is None:
            labels: Labels = te.labels
            value: list[Any] = [str(e.ts), e.line]
        else:
            labels, extra = cat.split(te.labels, e.metadata)
            value = [str(e.ts), e.line, extra]
        key = tuple(sorted(labels.items()))
        g = groups.get(key)
        if g is None:
            g = groups[key] = {"stream": labels, "values": []}
        elif cat is not None and direction is not None:
            multi.add(key)
        g["values"].append(value)
    for key in multi:  # several result streams folded into one: restore the order
        vals = groups[key]["values"]
        vals.sort(key=lambda v: int(v[0]), reverse=direction == Direction.BACKWARD)
    return list(groups.values())


async def _categorizer(
    backend: Backend, query: str, start: int, end: int, tenant: str
) -> Categorizer:
    sel = selector_text(query)
    sets = await backend.series([sel], start, end, tenant) if sel else []
    return Categorizer(sets)


def _flatten(res: StreamsResult) -> list[TailEntry]:
    return [TailEntry(s.labels, e) for s in res.streams for e in s.entries]


def result_json(
    res: QueryResult,
    *,
    cat: Categorizer | None = None,
    flags: list[str] | None = None,
    direction: Direction = Direction.BACKWARD,
) -> dict[str, Any]:
    data: dict[str, Any] = {"resultType": res.result_type}
    if isinstance(res, StreamsResult):
        if cat is None:
            data["result"] = [
                {"stream": s.labels, "values": [[str(e.ts), e.line] for e in s.entries]}
                for s in res.streams
            ]
        else:
            data["result"] = _entries_json(_flatten(res), cat, direction)
    elif isinstance(res, MatrixResult):
        data["result"] = [
            {"metric": s.metric, "values": [[fmt_time(t), fmt_value(v)] for t, v in s.values]}
            for s in res.series
        ]
    elif isinstance(res, VectorResult):
        data["result"] = [
            {"metric": s.metric, "value": [fmt_time(s.ts), fmt_value(s.value)]} for s in res.samples
        ]
    elif isinstance(res, ScalarResult):
        data["result"] = [fmt_time(res.ts), fmt_value(res.value)]
    data["stats"] = _stats(res.stats)
    if flags is not None:
        data["encodingFlags"] = flags
    return {"status": "success", "data": data}


# ---------------------------------------------------------------------- OpenAPI documentation

_PARAM_DOCS = {
    "query": "LogQL query",
    "start": "Start time: Unix seconds (float), Unix ns (> 10 digits) or RFC3339; "
    "default end - since",
    "end": "End time (exclusive for log queries), same formats; default now",
    "since": "Duration before end used when start is absent (default 1h)",
    "time": "Evaluation time of an instant query; default now",
    "limit": "Maximum number of log entries (default 100, > 0)",
    "direction": "forward or backward (default backward)",
    "step": "Metric query resolution: duration or float seconds; default max(1, range/250) s",
    "interval": "Log queries: keep only entries at least this far apart",
    "delay_for": "Tail: seconds (0-5) to hold back each frame",
    "match[]": "Stream selector (repeatable); none means all streams",
}


def _doc(*names: str) -> dict[str, Any]:
    params = []
    for n in names:
        schema: dict[str, Any] = (
            {"type": "array", "items": {"type": "string"}} if n == "match[]" else {"type": "string"}
        )
        doc = _PARAM_DOCS[n]
        params.append(
            {"name": n, "in": "query", "required": False, "schema": schema, "description": doc}
        )
    return {"parameters": params}


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Coroutine[Any, Any, Response]])


def _get_post(
    path: str, *, summary: str, doc: dict[str, Any], name: str | None = None
) -> Callable[[_Endpoint], _Endpoint]:
    """Register an endpoint for GET and for POST (a form body), each with its operation id."""

    def register(fn: _Endpoint) -> _Endpoint:
        base = name or fn.__name__
        for method in ("GET", "POST"):
            router.add_api_route(
                path,
                fn,
                methods=[method],
                summary=summary,
                openapi_extra=doc,
                operation_id=f"{base}_{method.lower()}",
            )
        return fn

    return register


# ---------------------------------------------------------------------- push


def _go_time(ns: int) -> str:
    """A timestamp as Go's time.Time.String() writes it (UTC)."""
    try:
        sec, frac = divmod(ns, NS_PER_SECOND)
        text = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return str(ns)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + " +0000 UTC"


def partial_failure_body(rejected: Sequence[RejectedEntry], total: int, tenant: str) -> str:
    lines = [
        f"entry with timestamp {_go_time(r.ts)} ignored, reason: '{r.reason}',"
        for r in rejected[:MAX_RETURNED_ERRORS]
    ]
    lines.append(f"user '{tenant}', total ignored: {len(rejected)} out of {total}")
    return "\n".join(lines)


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = PushBodyError("request body too large", status=413)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _push(request: Request) -> Response:
    ctx = context_of(request)
    tenant = tenant_of(request)
    body = await _read_body(request, ctx.push.max_body_bytes)
    ctype = request.headers.get("content-type", "")
    enc = request.headers.get("content-encoding", "")
    if len(body) > DECODE_IN_THREAD_BYTES:
        decoded = await asyncio.to_thread(decode_body, body, ctype, enc, ctx.push)
    else:
        decoded = decode_body(body, ctype, enc, ctx.push)
    rejected = decoded.rejected
    if any(s.entries for s in decoded.streams):
        result = await ctx.backend.push(decoded.streams, tenant)
        rejected.extend(result.rejected)
    ctx.metrics.ingest_bytes.labels("loki").inc(len(body))
    ctx.metrics.ingest_entries.labels("loki", "accepted").inc(max(0, decoded.total - len(rejected)))
    if rejected:
        ctx.metrics.ingest_entries.labels("loki", "rejected").inc(len(rejected))
    if rejected:
        return _plain(400, partial_failure_body(rejected, decoded.total, tenant))
    return Response(status_code=204)


_PUSH_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/loki/api/v1/push",
    status_code=204,
    response_class=Response,
    summary="Push log entries (JSON or snappy protobuf)",
    openapi_extra=_PUSH_DOC,
)
async def push(request: Request) -> Response:
    """Loki's push: JSON (`ts` a string of ns; optional structured metadata as a third value
    element) or a snappy-compressed protobuf PushRequest; gzip/deflate bodies. 204 on success;
    400 with the rejected entries listed on a partial failure; 413 for a body over the limit."""
    return await _push(request)


@router.post(
    "/api/prom/push",
    status_code=204,
    response_class=Response,
    summary="Push log entries (legacy endpoint)",
    openapi_extra=_PUSH_DOC,
)
async def push_legacy(request: Request) -> Response:
    """The pre-0.4 push endpoint (python-logging-loki's default): `{"streams":[{"labels":
    "{a=\\"b\\"}","entries":[{"ts":"<RFC3339>","line":"..."}]}]}`, or the same protobuf."""
    return await _push(request)


# ---------------------------------------------------------------------- queries


async def _interval_query(
    backend: Backend,
    query: str,
    start: int,
    end: int,
    *,
    limit: int,
    direction: Direction,
    interval: int,
    tenant: str,
) -> StreamsResult:
    """A log query keeping one entry, then only entries >= `interval` past the last kept (Loki's
    `interval`, across all streams). Pages through the store: after each full page the next one
    starts `interval` past the last kept entry, since nothing before that can be kept."""
    page = min(max(limit, 1000), getattr(backend.logs, "max_entries_per_query", 5000))
    kept: list[TailEntry] = []
    stats = QueryStats()
    last: int | None = None
    lo, hi = start, end
    t0 = time.perf_counter()
    while len(kept) < limit and lo < hi:
        res = await backend.query(query, lo, hi, limit=page, direction=direction, tenant=tenant)
        assert isinstance(res, StreamsResult)
        stats.lines_processed += res.stats.lines_processed
        stats.bytes_processed += res.stats.bytes_processed
        got = _flatten(res)
        got.sort(key=lambda te: te.entry.ts, reverse=direction == Direction.BACKWARD)
        for te in got:
            ts = te.entry.ts
            if (
                last is None
                or (direction == Direction.FORWARD and ts >= last + interval)
                or (direction == Direction.BACKWARD and ts <= last - interval)
            ):
                kept.append(te)
                last = ts
                if len(kept) >= limit:
                    break
        if len(got) < page or last is None:
            break
        if direction == Direction.FORWARD:
            lo = last + interval
        else:
            hi = last - interval + 1
    groups: dict[tuple[tuple[str, str], ...], list[LogEntry]] = {}
    labels_of: dict[tuple[tuple[str, str], ...], Labels] = {}
    for te in kept:
        key = tuple(sorted(te.labels.items()))
        labels_of.setdefault(key, te.labels)
        groups.setdefault(key, []).append(te.entry)
    stats.entries_returned = len(kept)
    stats.exec_time = time.perf_counter() - t0
    return StreamsResult([Stream(labels_of[k], v) for k, v in groups.items()], stats)


@_get_post(
    "/loki/api/v1/query_range",
    summary="Range query (logs or metrics)",
    doc=_doc("query", "start", "end", "since", "limit", "direction", "step", "interval"),
)
async def query_range(request: Request) -> Response:
    """Log queries answer `streams` (entries with start <= ts < end, `limit` over all streams);
    metric queries answer a `matrix` sampled every `step`."""
    p = await params_of(request)
    backend = context_of(request).backend
    tenant = tenant_of(request)
    start, end = _bounds(p, time.time_ns())
    if end < start:
        raise QueryError("end timestamp must not be before or equal to start time")
    limit = _limit(p)
    direction = _direction(p)
    step = parse_step(p.get("step"), start, end)
    interval = 0
    if raw := p.get("interval"):
        interval = _seconds_or_duration(raw, "interval")
        if interval < 0:
            raise QueryError(
                "negative query interval widths are not accepted. Try a positive integer"
            )
    query = p.get("query") or ""
    flags = _flags(request)
    if interval > 0 and selector_text(query) is not None:
        res: QueryResult = await _interval_query(
            backend,
            query,
            start,
            end,
            limit=limit,
            direction=direction,
            interval=interval,
            tenant=tenant,
        )
    else:
        with context_of(request).metrics.source_timer("loki_query_range"):
            res = await backend.query(
                query, start, end, limit=limit, direction=direction, step_ns=step, tenant=tenant
            )
    cat = None
    if isinstance(res, StreamsResult) and flags is not None and CATEGORIZE in flags:
        cat = await _categorizer(backend, query, start, end, tenant)
    return _json(result_json(res, cat=cat, flags=flags, direction=direction))


@_get_post(
    "/loki/api/v1/query",
    summary="Instant metric query",
    doc=_doc("query", "time", "limit", "direction"),
)
async def query_instant(request: Request) -> Response:
    """A metric query at one instant: a `vector` (or a `scalar` for a bare literal). Log
    queries get 400, as in Loki 3.2+: send them to query_range."""
    p = await params_of(request)
    backend = context_of(request).backend
    tenant = tenant_of(request)
    at = _time(p, "time", time.time_ns())
    limit = _limit(p)
    _direction(p)
    with context_of(request).metrics.source_timer("loki_query"):
        res = await backend.query_instant(p.get("query") or "", at, limit=limit, tenant=tenant)
    return _json(result_json(res, flags=_flags(request)))


def _data_or_omitted(values: list[str]) -> Response:
    return _json({"status": "success", "data": values} if values else {"status": "success"})


@_get_post("/loki/api/v1/labels", summary="Label names", doc=_doc("start", "end", "since", "query"))
async def labels(request: Request) -> Response:
    """Label names of the streams with entries in the range (default: the last hour). `data` is
    left out when there are none, as in Loki."""
    p = await params_of(request)
    start, end = _bounds(p, time.time_ns())
    names = await context_of(request).backend.labels(
        start, end, p.get("query") or None, tenant_of(request)
    )
    return _data_or_omitted(names)


_get_post(
    "/loki/api/v1/label",
    summary="Label names (alias of /labels)",
    doc=_doc("start", "end", "since", "query"),
    name="label_alias",
)(labels)


@_get_post(
    "/loki/api/v1/label/{name}/values",
    summary="Values of one label",
    doc=_doc("start", "end", "since", "query"),
)
async def label_values(request: Request, name: str) -> Response:
    """Values of label `name` in the range (default: the last hour); `data` omitted when none."""
    p = await params_of(request)
    start, end = _bounds(p, time.time_ns())
    values = await context_of(request).backend.label_values(
        name, start, end, p.get("query") or None, tenant_of(request)
    )
    return _data_or_omitted(values)


@_get_post(
    "/loki/api/v1/series", summary="Stream label sets", doc=_doc("match[]", "start", "end", "since")
)
async def series(request: Request) -> Response:
    """Label sets of the streams matching any `match[]` (or `match`) selector; none, or `{}`,
    means all streams. `data` is always an array."""
    p = await params_of(request)
    start, end = _bounds(p, time.time_ns())
    matches = p.getlist("match[]") + p.getlist("match")
    found = await context_of(request).backend.series(matches, start, end, tenant_of(request))
    return _json({"status": "success", "data": found})


@_get_post(
    "/loki/api/v1/index/stats",
    summary="Index statistics (an estimate)",
    doc=_doc("query", "start", "end", "since"),
)
async def index_stats(request: Request) -> Response:
    """`{"streams","chunks","entries","bytes"}` (no envelope) for the query's selector."""
    p = await params_of(request)
    backend = context_of(request).backend
    tenant = tenant_of(request)
    start, end = _bounds(p, time.time_ns())
    expr = parse(p.get("query") or "").expr
    sel = _selector(_first_selector(expr))
    streams = await backend.series([sel], start, end, tenant)
    entries = nbytes = 0
    if streams and end > start:
        rng = format_duration(end - start)
        for op in ("count_over_time", "bytes_over_time"):
            res = await backend.query_instant(f"sum({op}({sel}[{rng}]))", end, tenant=tenant)
            total = int(sum(s.value for s in res.samples)) if isinstance(res, VectorResult) else 0
            if op == "count_over_time":
                entries = total
            else:
                nbytes = total
    return _json({"streams": len(streams), "chunks": len(streams), "entries": entries,
                  "bytes": nbytes})  # fmt: skip


def _first_selector(expr: ast.Expr) -> ast.Selector:
    if isinstance(expr, ast.LogQuery):
        return expr.selector
    if isinstance(expr, ast.RangeAggregation):
        return expr.query.selector
    if isinstance(expr, ast.VectorAggregation):
        return _first_selector(expr.inner)
    if isinstance(expr, ast.BinaryOp):
        try:
            return _first_selector(expr.left)
        except QueryError:
            return _first_selector(expr.right)
    raise QueryError("index/stats needs a query with a stream selector")


# ---------------------------------------------------------------------- format_query


def format_logql(expr: ast.Expr) -> str:
    """LogQL text of a parsed query, in one canonical line (it parses back to the same tree)."""
    if isinstance(expr, ast.LogQuery):
        return " ".join([_selector(expr.selector), *(_stage(s) for s in expr.pipeline)])
    if isinstance(expr, ast.RangeAggregation):
        return f"{expr.op}({format_logql(expr.query)} [{format_duration(expr.range_ns)}])"
    if isinstance(expr, ast.VectorAggregation):
        grouping = ""
        if expr.grouping is not None:
            kind = "without" if expr.grouping.without else "by"
            grouping = f" {kind} ({', '.join(expr.grouping.labels)})"
        param = "" if expr.param is None else f"{_num(expr.param)}, "
        return f"{expr.op}{grouping} ({param}{format_logql(expr.inner)})"
    if isinstance(expr, ast.BinaryOp):
        return f"{_operand(expr.left)} {expr.op} {_operand(expr.right)}"
    return _num(expr.value)


def _operand(e: ast.MetricExpr) -> str:
    return f"({format_logql(e)})" if isinstance(e, ast.BinaryOp) else format_logql(e)


def _num(v: float) -> str:
    return fmt_value(v)


def _label_expr(e: ast.LabelExpr, top: bool = True) -> str:
    if isinstance(e, ast.LabelCompare):
        value = quote(e.value) if e.kind == "string" else e.value
        return f"{e.name}{e.op}{value}"
    if isinstance(e, ast.LabelAnd):
        return f"{_label_expr(e.left, False)} and {_label_expr(e.right, False)}"
    text = f"{_label_expr(e.left, False)} or {_label_expr(e.right, False)}"
    return text if top else f"({text})"


def _params(params: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{name}={quote(path)}" for name, path in params)


def _stage(s: ast.Stage) -> str:
    if isinstance(s, ast.LineFilter):
        return f"{s.op} {quote(s.value)}"
    if isinstance(s, ast.JsonParser):
        return "| json" + (" " + _params(s.params) if s.params else "")
    if isinstance(s, ast.LogfmtParser):
        parts = ["| logfmt"]
        if s.strict:
            parts.append("--strict")
        if s.keep_empty:
            parts.append("--keep-empty")
        if s.params:
            parts.append(_params(s.params))
        return " ".join(parts)
    if isinstance(s, ast.LabelFilter):
        return "| " + _label_expr(s.expr)
    if isinstance(s, ast.LineFormat):
        return f"| line_format {quote(s.template)}"
    if isinstance(s, ast.LabelFormat):
        return "| label_format " + ", ".join(
            f"{dst}={quote(src)}" if is_tpl else f"{dst}={src}" for dst, src, is_tpl in s.renames
        )
    kind = "drop" if isinstance(s, ast.DropLabels) else "keep"
    items = [*s.names, *(f"{m.name}{m.op}{quote(m.value)}" for m in s.matchers)]
    return f"| {kind} " + ", ".join(items)


@_get_post(
    "/loki/api/v1/format_query", summary="Validate and format a LogQL query", doc=_doc("query")
)
async def format_query(request: Request) -> Response:
    """200 `{"status":"success","data":"<formatted>"}`; 400 `{"status":"invalid-query",
    "error":"..."}` (JSON, as Loki answers this endpoint)."""
    p = await params_of(request)
    try:
        text = format_logql(parse(p.get("query") or "").expr)
    except UsageError as exc:
        return _json({"status": "invalid-query", "error": str(exc)}, status=400)
    return _json({"status": "success", "data": text})


# ---------------------------------------------------------------------- ready, buildinfo


@router.get("/ready", response_class=PlainTextResponse, summary="Readiness")
async def ready(request: Request) -> PlainTextResponse:
    """200 `ready`; 503 while starting or stopping, or when a source is down."""
    ctx = context_of(request)
    if not ctx.ready:
        return _plain(503, "not ready: the server is starting or stopping")
    down = [h for h in await ctx.backend.health() if h.state == HealthState.DOWN]
    if down:
        return _plain(503, "not ready: " + "; ".join(f"{h.name}: {h.reason}" for h in down))
    return _plain(200, "ready")


@router.get("/loki/api/v1/status/buildinfo", summary="Build information")
async def buildinfo() -> Response:
    """A bare object, Loki-like: `version` is the Loki API version this server follows."""
    return _json(
        {
            "version": LOKI_VERSION,
            "revision": f"agentlog-{__version__}",
            "branch": "agentlog",
            "buildUser": "agentlog",
            "buildDate": "",
            "goVersion": f"python{sys.version.split()[0]}",
        }
    )


# ---------------------------------------------------------------------- tail


async def _deny(ws: WebSocket, status: int, text: str) -> None:
    """Refuse a WebSocket upgrade with a plain HTTP response (or a policy close without the
    server extension for it)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(_plain(status, text))
    else:
        await ws.close(code=1008, reason=close_reason(text))


def _delay_for(p: Params) -> int:
    raw = p.get("delay_for")
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise QueryError(f"delay_for: cannot parse {raw!r} as whole seconds") from None
    if value > MAX_DELAY_FOR:
        raise QueryError(f"delay_for can't be greater than {MAX_DELAY_FOR}")
    if value < 0:
        raise QueryError("delay_for must not be negative")
    return value


class _Tail(TailSession):
    """One tail connection: the store's tail -> frames (<= 100 entries, <= 10 buffered) -> the
    socket, held back `delay_for` seconds if asked."""

    route = "loki"
    max_duration_close = (1011, "reached tail max duration limit")

    def __init__(
        self,
        ws: WebSocket,
        ctx: AppContext,
        *,
        query: str,
        start: int,
        limit: int,
        delay: int,
        tenant: str,
        flags: list[str] | None,
    ) -> None:
        super().__init__(ws, ctx)
        self.query = query
        self.start = start
        self.limit = limit
        self.delay = delay
        self.tenant = tenant
        self.flags = flags
        self.fmt = ("loki", None if flags is None else tuple(flags))
        self.cat: Categorizer | None = None
        self.sel = selector_text(query) if flags and CATEGORIZE in flags else None
        self._cat_refreshed = 0.0
        self.queue: asyncio.Queue[tuple[float, list[Frame]]] = asyncio.Queue(
            maxsize=TAIL_BUFFERED_FRAMES
        )

    async def _categorize(self, entries: Sequence[TailEntry]) -> Categorizer | None:
        if self.sel is None:
            return None
        now = time.monotonic()
        stale = self.cat is None or (
            any(self.cat.indexed(te.labels, te.entry.metadata) is None for te in entries)
            and now - self._cat_refreshed > 1.0
        )
        if stale:
            end = time.time_ns() + 600 * NS_PER_SECOND
            found = await self.ctx.backend.series([self.sel], self.start, end, self.tenant)
            if self.cat is None:
                self.cat = Categorizer(found)
            else:
                self.cat.add(found)
            self._cat_refreshed = now
        return self.cat

    async def _dropped(self, batch: TailBatch) -> list[dict[str, Any]]:
        n = min(batch.dropped, MAX_DROPPED_PER_FRAME)
        lo = batch.dropped_from if batch.dropped_from is not None else 0
        hi = batch.dropped_to if batch.dropped_to is not None else lo
        out: list[dict[str, Any]] = []
        with contextlib.suppress(AgentlogError):
            res = await self.ctx.backend.query(
                self.query, lo, hi + 1, limit=n, direction=Direction.FORWARD, tenant=self.tenant
            )
            if isinstance(res, StreamsResult):
                got = sorted(_flatten(res), key=lambda te: te.entry.ts)
                out = [{"labels": te.labels, "timestamp": str(te.entry.ts)} for te in got[:n]]
        # The count is what matters to a client: pad with the bounds if the read-back came short.
        pad_labels: Labels = out[-1]["labels"] if out else {}
        while len(out) < n:
            out.append({"labels": pad_labels, "timestamp": str(hi)})
        return out

    def _frame(self, streams: list[dict[str, Any]]) -> dict[str, Any]:
        frame: dict[str, Any] = {"streams": streams}
        if self.flags is not None:
            frame["encodingFlags"] = self.flags
        return frame

    def _plain_frames(self, entries: Sequence[TailEntry]) -> list[Frame]:
        return [
            (dumps(self._frame(_entries_json(chunk, None, None))).decode(), len(chunk))
            for chunk in _chunks(entries, TAIL_FRAME_ENTRIES)
        ]

    async def _frames(self, batch: TailBatch) -> list[Frame]:
        if not batch.dropped and self.sel is None:
            # The common case: the same batch object goes to every subscriber of this query.
            return self.ctx.frames.get(batch, self.fmt, lambda: self._plain_frames(batch.entries))
        frames: list[dict[str, Any]] = []
        for chunk in _chunks(batch.entries, TAIL_FRAME_ENTRIES):
            cat = await self._categorize(chunk)
            frames.append(self._frame(_entries_json(chunk, cat, None)))
        if batch.dropped:
            if not frames:
                frames.append(self._frame([]))
            frames[0]["dropped_entries"] = await self._dropped(batch)
        return [(dumps(f).decode(), sum(len(st["values"]) for st in f["streams"])) for f in frames]

    async def produce(self) -> None:
        loop = asyncio.get_running_loop()
        it = self.ctx.backend.tail(self.query, self.start, limit=self.limit, tenant=self.tenant)
        try:
            async for batch in it:
                arrived = loop.time()
                if batch.dropped:
                    self.ctx.metrics.tail_dropped.labels("loki").inc(batch.dropped)
                frames = await self._frames(batch)
                if self.delay:
                    await self.queue.put((arrived, frames))
                else:
                    await self.send_frames(frames)  # no delay_for: no hand-over to `send`
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    async def send(self) -> None:
        """With `delay_for`: hold each batch's frames until `delay` seconds after it came."""
        loop = asyncio.get_running_loop()
        while True:
            arrived, frames = await self.queue.get()
            wait = arrived + self.delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.send_frames(frames)

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {"send": self.send()} if self.delay else {}


def _chunks(entries: Sequence[TailEntry], n: int) -> Iterable[Sequence[TailEntry]]:
    for i in range(0, len(entries), n):
        yield entries[i : i + n]


@router.websocket("/loki/api/v1/tail")
async def tail(ws: WebSocket) -> None:
    """Live tail over a WebSocket: backfill (up to `limit` newest entries since `start`, oldest
    first), then new entries; frames of <= 100 entries; `dropped_entries` when this reader fell
    behind; a ping every second. Bad parameters get HTTP 400 before the upgrade."""
    ctx = context_of(ws)
    p = Params(list(ws.query_params.multi_items()))
    try:
        tenant = tenant_of(ws)
        query = p.get("query") or ""
        if selector_text(query) is None:
            raise QueryError("tail needs a log query (a stream selector and filters), not a metric")
        limit = _limit(p)
        start = _time(p, "start", time.time_ns() - DEFAULT_SINCE_NS)
        delay = _delay_for(p)
    except (AgentlogError, PushBodyError) as exc:
        await _deny(ws, 400, str(exc))
        return
    await ws.accept()
    count, cap = ctx.active_tails.get(tenant, 0) + 1, ctx.tail.max_per_tenant
    over = (
        1011,
        f"max concurrent tail requests limit exceeded, count > limit ({count} > {cap})",
    )
    async with tail_slot(ws, ctx, tenant, "loki", over) as admitted:
        if admitted:
            await _Tail(
                ws,
                ctx,
                query=query,
                start=start,
                limit=limit,
                delay=delay,
                tenant=tenant,
                flags=_flags(ws),
            ).run()
