"""The JSON API of the HTTP port (`/api/...`, `/health`, `/metrics`): the Backend facade over HTTP.

Every route authenticates and rate-limits through `auth.require` (see auth.py), takes its tenant
from the caller's identity, calls one facade method and encodes the dataclass it returns. The
OpenAPI document (`/openapi.json`) comes from the parameter and response models below.

Conventions:

- Times in: Unix seconds (`1714557600`, `1714557600.5`), Unix ns (more than 10 digits) or RFC3339,
  as Loki reads them; a window is `start`/`end` or `since` (a duration such as `15m`, `1h`, `7d`)
  before `end` (default: now).
- Times out: integer Unix ns for runs, summaries and analytics (as `agentlog ... -o json`); log
  entries carry `ts` as a *string* of ns, as Loki does, so a client can resume a tail from it
  without float rounding.
- Errors: JSON `{"detail": "..."}` in plain words: 400 (a bad request the models cannot express),
  401/403 (auth), 404 (no such run), 409 (a status or triage change the rules forbid), 413, 429
  (with `Retry-After`), 503 (a source is down). Field problems are 422 with FastAPI's field-level
  list: `{"detail": [{"loc": ["query", "since"], "msg": "...", ...}]}`; a LogQL syntax error is one
  too, located at the field that held the query.

Caching: `query_range` answers are cached in the facade's cache (memory, then Redis) for 2 s when
the window reaches the present (windows given relative to now are aligned to whole seconds, so
a dashboard refreshing every second shares one query) and 5 min when it lies wholly in the past
(lines pushed late with old timestamps show up after that); `X-Cache: hit|miss` says which.
Task lists (`GET /api/tasks`) are cached for 1 s, so dashboards polling one URL share a query
a second; relative windows are aligned to whole seconds as above. A triage or status change
made through this process shows in the next list at once; runs changed by pushed lines or by
another process show within that second. Summaries are cached by the facade (`?refresh=true`
makes a new one: operator role).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, HTTPException, Query, Request, Response, WebSocket
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.websockets import WebSocketDisconnect

from .. import __version__
from ..apikeys import ApiKey
from ..cache import get_or_compute
from ..errors import (
    AgentlogError,
    InvalidTransition,
    LogQLSyntaxError,
    LogQLUnsupportedError,
    NotFound,
    QueryError,
    ServiceUnavailable,
    UsageError,
)
from ..ingest import label_name
from ..logql import ast
from ..logql.parser import parse
from ..logql.strings import quote
from ..logql.timefmt import format_duration, parse_duration, parse_step, parse_time
from ..models import (
    CacheStats,
    Direction,
    HealthState,
    MatrixResult,
    Overview,
    PatternReport,
    Performance,
    QueryResult,
    RunStatus,
    ScalarResult,
    SourceHealth,
    StreamsResult,
    Summary,
    TailEntry,
    Task,
    TaskFilter,
    TaskSort,
    TriageState,
    VectorResult,
)
from .app import AppContext, context_of
from .auth import Identity, Role, require
from .metrics import CONTENT_TYPE
from .wstail import Frame, TailSession, tail_slot

__all__ = ["build_search_logql", "public", "router"]

NS = 1_000_000_000
MAX_LIMIT = 5000
MAX_QUERY = 16_384
LIVE_TTL_S = 2.0
TASKS_TTL_S = 1.0  # a task list may be this old (a triage through this port shows at once)
PAST_TTL_S = 300.0
TAIL_FRAME_ENTRIES = 500
RUN_ID_MAX = 256


# ---------------------------------------------------------------- errors


class ErrorOut(BaseModel):
    detail: str


_ERR = {"model": ErrorOut}
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Bad request"},
    401: {**_ERR, "description": "No, expired or invalid credentials"},
    403: {**_ERR, "description": "The role is too low, or X-Scope-OrgID names another tenant"},
    413: {**_ERR, "description": "Request body too large"},
    429: {**_ERR, "description": "Rate limit exceeded (see Retry-After)"},
    503: {**_ERR, "description": "A source is unavailable"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {**_ERR, "description": "No such run"}}


def field_error(loc: Sequence[str | int], msg: str, value: object = None) -> RequestValidationError:
    """A 422 naming one field, in FastAPI's format."""
    return RequestValidationError(
        [{"type": "value_error", "loc": tuple(loc), "msg": msg, "input": value}]
    )


@contextlib.contextmanager
def logql_field(loc: Sequence[str | int], value: str) -> Iterator[None]:
    """LogQL syntax (or unsupported-construct) errors raised inside become a 422 at `loc`."""
    try:
        yield
    except (LogQLSyntaxError, LogQLUnsupportedError) as exc:
        raise field_error(loc, str(exc), value) from None


def _error_response(request: Request, exc: AgentlogError) -> Response:
    if isinstance(exc, InvalidTransition):
        status = 409
    elif isinstance(exc, UsageError):
        status = 400
    elif isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, ServiceUnavailable):
        status = 503
    else:
        status = 500
    if status >= 500:  # for the error log (security.RequestLog)
        request.scope.setdefault("state", {})["error"] = f"{type(exc).__name__}: {exc}"
    return Response(orjson.dumps({"detail": str(exc)}), status, media_type="application/json")


class ApiRoute(APIRoute):
    """Backend errors become JSON `{"detail": ...}` with the status their kind calls for."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AgentlogError as exc:
                return _error_response(request, exc)

        return route


router = APIRouter(prefix="/api", route_class=ApiRoute, responses=COMMON_RESPONSES)
public = APIRouter(route_class=ApiRoute)

Viewer = Annotated[Identity, require(Role.VIEWER)]
Operator = Annotated[Identity, require(Role.OPERATOR, "write")]
Admin = Annotated[Identity, require(Role.ADMIN, "write")]
AdminRead = Annotated[Identity, require(Role.ADMIN)]


# ---------------------------------------------------------------- time windows

TimeParam = Annotated[
    str | None,
    Query(
        max_length=40,
        description="Unix seconds, Unix ns (> 10 digits) or RFC3339; see `since` for the default",
    ),
]
SinceParam = Annotated[
    str | None,
    Query(max_length=20, description="Window length before `end` when `start` is absent (1h)"),
]
RunIdPath = Annotated[str, PathParam(min_length=1, max_length=RUN_ID_MAX)]


def _parse_time(value: str | None, default: int, loc: Sequence[str]) -> int:
    try:
        return parse_time(value, default)
    except QueryError as exc:
        raise field_error(loc, str(exc), value) from None


def window(
    start: str | None,
    end: str | None,
    since: str | None,
    *,
    default_since: str = "1h",
    where: str = "query",
    align_ns: int = 1,
) -> tuple[int, int]:
    """(start, end) in ns: `end` defaults to now, rounded up to a multiple of `align_ns` (so
    repeated relative requests share cache keys and still see the newest lines), `start` to
    end - since."""
    now = time.time_ns()
    end_ns = _parse_time(end, -(-now // align_ns) * align_ns, (where, "end"))
    text = since or default_since
    try:
        since_ns = parse_duration(text)
    except QueryError as exc:
        raise field_error((where, "since"), str(exc), since) from None
    anchor = end_ns if end is None else min(end_ns, now)
    start_ns = _parse_time(start, anchor - since_ns, (where, "start"))
    if end_ns <= start_ns:
        raise field_error((where, "end"), "end must be after start", end)
    return start_ns, end_ns


# ---------------------------------------------------------------- models: logs


class EntryOut(BaseModel):
    ts: str = Field(description="Unix ns, as a string")
    line: str
    labels: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str] = Field(default_factory=dict, description="Structured metadata")


class StreamOut(BaseModel):
    labels: dict[str, str]
    entries: list[EntryOut]


class SeriesOut(BaseModel):
    metric: dict[str, str]
    values: list[tuple[float, float | None]] = Field(description="[unix seconds, value] pairs")


class SampleOut(BaseModel):
    metric: dict[str, str]
    ts: float
    value: float | None


class StatsOut(BaseModel):
    exec_time: float
    lines_processed: int
    bytes_processed: int
    entries_returned: int


class QueryOut(BaseModel):
    query: str
    start: int
    end: int
    result_type: Literal["streams", "matrix", "vector", "scalar"]
    streams: list[StreamOut] = Field(default_factory=list)
    series: list[SeriesOut] = Field(default_factory=list)
    samples: list[SampleOut] = Field(default_factory=list)
    scalar: float | None = None
    stats: StatsOut


def _query_out(query: str, start: int, end: int, res: QueryResult) -> QueryOut:
    st = res.stats
    out = QueryOut(
        query=query,
        start=start,
        end=end,
        result_type=res.result_type,  # type: ignore[arg-type]
        stats=StatsOut(
            exec_time=st.exec_time,
            lines_processed=st.lines_processed,
            bytes_processed=st.bytes_processed,
            entries_returned=st.entries_returned,
        ),
    )
    if isinstance(res, StreamsResult):
        out.streams = [
            StreamOut(
                labels=s.labels,
                entries=[
                    EntryOut(ts=str(e.ts), line=e.line, metadata=e.metadata) for e in s.entries
                ],
            )
            for s in res.streams
        ]
    elif isinstance(res, MatrixResult):
        out.series = [SeriesOut(metric=s.metric, values=list(s.values)) for s in res.series]
    elif isinstance(res, VectorResult):
        out.samples = [SampleOut(metric=s.metric, ts=s.ts, value=s.value) for s in res.samples]
    elif isinstance(res, ScalarResult):
        out.scalar = res.value
    return out


def _ctx(request: Request | WebSocket) -> AppContext:
    return context_of(request)


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        model.model_dump_json().encode(), status, headers=headers, media_type="application/json"
    )


# ---------------------------------------------------------------- /api/logs


QueryParam = Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="LogQL")]


@router.get("/logs/query_range", response_model=QueryOut, summary="Range query (logs or metrics)")
async def query_range(
    request: Request,
    ident: Viewer,
    query: QueryParam,
    start: TimeParam = None,
    end: TimeParam = None,
    since: SinceParam = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    direction: Direction = Direction.BACKWARD,
    step: Annotated[str | None, Query(max_length=20, description="Metric step")] = None,
) -> Response:
    """Log lines (`streams`, newest first unless `direction=forward`) or a metric `matrix`, for
    `start <= ts < end`. Cached (see the module doc); `X-Cache: hit|miss`."""
    ctx = _ctx(request)
    start_ns, end_ns = window(start, end, since, align_ns=NS if end is None else 1)
    try:
        step_ns = parse_step(step, start_ns, end_ns)
    except QueryError as exc:
        raise field_error(("query", "step"), str(exc), step) from None
    raw = "\x00".join(
        [query, str(start_ns), str(end_ns), str(limit), direction.value, str(step_ns)]
    )
    key = f"api:query_range:{ident.tenant}:{hashlib.sha256(raw.encode()).hexdigest()[:40]}"
    backend = ctx.backend
    cached = await backend.cache.get(key)
    if cached is not None:
        return Response(cached, media_type="application/json", headers={"X-Cache": "hit"})
    with logql_field(("query", "query"), query), ctx.metrics.source_timer("query_range"):
        res = await backend.query(
            query,
            start_ns,
            end_ns,
            limit=limit,
            direction=direction,
            step_ns=step_ns,
            tenant=ident.tenant,
        )
    body = _query_out(query, start_ns, end_ns, res).model_dump_json().encode()
    live = end_ns > time.time_ns() - 60 * NS
    await backend.cache.set(key, body, LIVE_TTL_S if live else PAST_TTL_S)
    return Response(body, media_type="application/json", headers={"X-Cache": "miss"})


_LEVEL_RE = re.compile(r"[A-Za-z]{1,20}")
_RE2_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def re2_escape(text: str) -> str:
    """`text` as a literal inside an RE2 (and Python) regular expression."""
    return _RE2_META.sub(r"\\\1", text)


class SearchIn(BaseModel):
    """Structured filters; every one given must match (AND)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=1000, description="Substring")
    regex: str | None = Field(
        None, min_length=1, max_length=1000, description="Regular expression (RE2 syntax)"
    )
    case_sensitive: bool = Field(False, description="For `text` (regex: use (?i) yourself)")
    levels: list[str] = Field(
        default_factory=list, max_length=10, description="Any of these levels (any case)"
    )
    agents: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50, description="Any of these agents"
    )
    run_id: str | None = Field(None, min_length=1, max_length=RUN_ID_MAX)
    start: str | None = Field(None, max_length=40)
    end: str | None = Field(None, max_length=40)
    since: str | None = Field(None, max_length=20, description="Window before end (1h)")
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    direction: Direction = Direction.BACKWARD

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        for item in v:
            if not _LEVEL_RE.fullmatch(item):
                raise ValueError(f"a level is 1-20 letters, got {item[:40]!r}")
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v


class SearchOut(BaseModel):
    logql: str = Field(description="The LogQL query that ran")
    start: int
    end: int
    entries: list[EntryOut]
    stats: StatsOut


def build_search_logql(s: SearchIn, *, agent_label: str, level_label: str, run_id: str) -> str:
    """The LogQL of a search: a stream selector (agents, levels), line filters (text, regex),
    then the run id, wherever it sits (stream label, structured metadata or the JSON line)."""
    matchers = []
    if s.agents:
        if len(s.agents) == 1:
            matchers.append(f"{agent_label}={quote(s.agents[0])}")
        else:
            alts = "|".join(re2_escape(a) for a in dict.fromkeys(s.agents))
            matchers.append(f"{agent_label}=~{quote(alts)}")
    if s.levels:
        alts = "|".join(re2_escape(v.lower()) for v in dict.fromkeys(s.levels))
        matchers.append(f"{level_label}=~{quote('(?i)(' + alts + ')')}")
    if not matchers:
        matchers.append(f'{agent_label}=~".+"')
    parts = ["{" + ", ".join(matchers) + "}"]
    if s.text is not None:
        if s.case_sensitive:
            parts.append(f"|= {quote(s.text)}")
        else:
            parts.append(f"|~ {quote('(?i)' + re2_escape(s.text))}")
    if s.regex is not None:
        parts.append(f"|~ {quote(s.regex)}")
    if s.run_id is not None:
        rid = label_name(run_id)
        parts.append(f"| json {rid}={quote(run_id)} | {rid}={quote(s.run_id)}")
        parts.append("| drop __error__, __error_details__")
    return " ".join(parts)


@router.post("/logs/search", response_model=SearchOut, summary="Search log lines")
async def search(request: Request, ident: Viewer, body: Annotated[SearchIn, Body()]) -> Response:
    """Structured filters turned into LogQL (returned as `logql`); entries newest first unless
    `direction` is forward."""
    ctx = _ctx(request)
    f = ctx.backend.fields
    start_ns, end_ns = window(body.start, body.end, body.since, where="body")
    logql = build_search_logql(body, agent_label=f.agent, level_label=f.level, run_id=f.run_id)
    with logql_field(("body", "regex"), body.regex or ""), ctx.metrics.source_timer("search"):
        res = await ctx.backend.query(
            logql,
            start_ns,
            end_ns,
            limit=body.limit,
            direction=body.direction,
            tenant=ident.tenant,
        )
    assert isinstance(res, StreamsResult)
    entries = [
        (e.ts, EntryOut(ts=str(e.ts), line=e.line, labels=s.labels, metadata=e.metadata))
        for s in res.streams
        for e in s.entries
    ]
    entries.sort(key=lambda p: p[0], reverse=body.direction == Direction.BACKWARD)
    st = res.stats
    return _json(
        SearchOut(
            logql=logql,
            start=start_ns,
            end=end_ns,
            entries=[e for _, e in entries],
            stats=StatsOut(
                exec_time=st.exec_time,
                lines_processed=st.lines_processed,
                bytes_processed=st.bytes_processed,
                entries_returned=st.entries_returned,
            ),
        )
    )


# ---------------------------------------------------------------- tail (WebSocket)


async def _deny(ws: WebSocket, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(Response(body, status, media_type="application/json"))
    else:
        await ws.close(code=1008, reason=detail.encode()[:123].decode("utf-8", "ignore"))


def _tail_params(ws: WebSocket) -> tuple[str, int, int]:
    p = ws.query_params
    query = p.get("query") or ""
    if not query or len(query) > MAX_QUERY:
        raise UsageError(f"query: a LogQL log query of 1-{MAX_QUERY} characters is required")
    if not isinstance(parse(query).expr, ast.LogQuery):
        raise UsageError("query: tail needs a log query (a stream selector and filters)")
    raw_limit = p.get("limit") or "100"
    if not raw_limit.isdigit() or int(raw_limit) > MAX_LIMIT:
        raise UsageError(f"limit: a whole number of lines of backfill, 0-{MAX_LIMIT}")
    now = time.time_ns()
    try:
        since = parse_duration(p.get("since") or "1h")
        start = parse_time(p.get("start"), now - since)
    except QueryError as exc:
        raise UsageError(f"start/since: {exc}") from None
    return query, start, int(raw_limit)


async def _backfill_total(ctx: AppContext, query: str, start: int, tenant: str) -> int | None:
    """How many entries the query has since `start` (to report a backfill cut by `limit`)."""
    now = time.time_ns()
    if now <= start:
        return 0
    with contextlib.suppress(AgentlogError):
        res = await ctx.backend.query_instant(
            f"sum(count_over_time({query} [{format_duration(now - start)}]))", now, tenant=tenant
        )
        if isinstance(res, VectorResult):
            return int(sum(s.value for s in res.samples))
    return None


def _tail_streams(entries: Sequence[TailEntry]) -> list[dict[str, Any]]:
    """Entries grouped by stream, in the shape query_range answers with: each stream's labels
    once per frame, not once per line (less to build, send and parse for every tail)."""
    streams: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for te in entries:
        key = tuple(sorted(te.labels.items()))
        s = streams.get(key)
        if s is None:
            s = streams[key] = {"labels": te.labels, "entries": []}
        e = te.entry
        s["entries"].append({"ts": str(e.ts), "line": e.line, "metadata": e.metadata})
    return list(streams.values())


class _TailSession(TailSession):
    route = "api"
    max_duration_close = (1000, "tail reached its maximum duration: reconnect to go on")

    def __init__(
        self, ws: WebSocket, ctx: AppContext, query: str, start: int, limit: int, tenant: str
    ) -> None:
        super().__init__(ws, ctx)
        self.query, self.start, self.limit, self.tenant = query, start, limit, tenant
        self.live_from = time.time_ns()  # made just before the `start` frame is sent

    @staticmethod
    def _entry_frames(entries: Sequence[TailEntry]) -> list[Frame]:
        frames: list[Frame] = []
        for i in range(0, len(entries), TAIL_FRAME_ENTRIES):
            chunk = entries[i : i + TAIL_FRAME_ENTRIES]
            frame = {
                "type": "entries",
                "streams": _tail_streams(chunk),
                "next_start": str(max(te.entry.ts for te in chunk) + 1),
            }
            frames.append((orjson.dumps(frame).decode(), len(chunk)))
        return frames

    async def produce(self) -> None:
        start, limit = self.start, self.limit
        if limit == 0:
            # No backfill means "from when the `start` frame went out": the store follows from
            # when this tail joins its reader, a moment later, so the lines stamped in between
            # come as backfill; a client that pushes once it has the frame misses none.
            start, limit = max(start, self.live_from), MAX_LIMIT
        it = self.ctx.backend.tail(self.query, start, limit=limit, tenant=self.tenant)
        try:
            async for batch in it:
                if batch.dropped:
                    self.ctx.metrics.tail_dropped.labels("api").inc(batch.dropped)
                    notice = {
                        "type": "dropped",
                        "count": batch.dropped,
                        "from": None if batch.dropped_from is None else str(batch.dropped_from),
                        "to": None if batch.dropped_to is None else str(batch.dropped_to),
                    }
                    await self.ws.send_text(orjson.dumps(notice).decode())
                if batch.entries:
                    build = functools.partial(self._entry_frames, batch.entries)
                    await self.send_frames(self.ctx.frames.get(batch, "api", build))
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()


@router.websocket("/logs/tail")
async def tail(ws: WebSocket, ident: Viewer) -> None:
    """Live tail over a WebSocket. Query parameters: `query` (a LogQL log query), `start` (resume
    from this time: Unix s/ns or RFC3339; default `since` ago), `since` (1h), `limit` (backfill
    lines, 0-5000, default 100). Frames (JSON text): first `{"type":"start", ...,
    "backfill_skipped": n}` (entries since `start` beyond `limit`, not replayed), then
    `{"type":"entries","streams":[{"labels":{...},"entries":[{ts,line,metadata}]}],
    "next_start":"<ns>"}` (streams as query_range returns them; reconnect with
    `start=<next_start>` to resume) and `{"type":"dropped","count":n,"from":"<ns>","to":"<ns>"}`
    when this reader fell behind (the lines are still in the store). Close codes: 1000 normal,
    1001 server shutting down, 1011 error, 1013 too many tails for the tenant."""
    ctx = _ctx(ws)
    try:
        query, start, limit = _tail_params(ws)
    except UsageError as exc:
        await _deny(ws, 400, str(exc))
        return
    skipped_total = await _backfill_total(ctx, query, start, ident.tenant) if limit else None
    await ws.accept()
    over = (1013, f"too many live tails for this tenant (limit {ctx.tail.max_per_tenant})")
    async with tail_slot(ws, ctx, ident.tenant, "api", over) as admitted:
        if not admitted:
            return
        with contextlib.suppress(WebSocketDisconnect):
            session = _TailSession(ws, ctx, query, start, limit, ident.tenant)
            await ws.send_text(
                orjson.dumps(
                    {
                        "type": "start",
                        "query": query,
                        "start": str(start),
                        "backfill_limit": limit,
                        "backfill_skipped": None
                        if skipped_total is None
                        else max(0, skipped_total - limit),
                    }
                ).decode()
            )
            await session.run()


# ---------------------------------------------------------------- /api/tasks


class TaskOut(BaseModel):
    run_id: str
    agent: str
    task: str
    status: RunStatus
    started_at: int | None
    ended_at: int | None
    last_seen: int | None
    duration_ns: int | None
    step_count: int
    error_count: int
    last_error: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    triage: TriageState
    triage_by: str
    triage_note: str
    triage_at: int | None
    tenant: str

    @classmethod
    def of(cls, t: Task) -> TaskOut:
        return cls(
            run_id=t.run_id,
            agent=t.agent,
            task=t.task,
            status=t.status,
            started_at=t.started_at,
            ended_at=t.ended_at,
            last_seen=t.last_seen,
            duration_ns=t.duration_ns,
            step_count=t.step_count,
            error_count=t.error_count,
            last_error=t.last_error,
            model=t.model,
            input_tokens=t.input_tokens,
            output_tokens=t.output_tokens,
            cost_usd=t.cost_usd,
            triage=t.triage,
            triage_by=t.triage_by,
            triage_note=t.triage_note,
            triage_at=t.triage_at,
            tenant=t.tenant,
        )


class TaskPageOut(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None = Field(description="Pass back as `cursor` for the next page")


@router.get("/tasks", response_model=TaskPageOut, summary="List runs")
async def list_tasks(
    request: Request,
    ident: Viewer,
    status: Annotated[list[RunStatus], Query(max_length=10)] = [],  # noqa: B006
    agent: Annotated[list[Annotated[str, Query(max_length=200)]], Query(max_length=50)] = [],  # noqa: B006
    triage: Annotated[list[TriageState], Query(max_length=10)] = [],  # noqa: B006
    q: Annotated[str, Query(max_length=200, description="In task, run id, last error")] = "",
    start: TimeParam = None,
    end: TimeParam = None,
    since: Annotated[
        str | None, Query(max_length=20, description="Runs started this recently")
    ] = None,
    sort: TaskSort = TaskSort.FAILING_FIRST,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    """Runs of the caller's tenant; filters repeat (`status=failed&status=timeout`). Keyset
    pagination: pass `next_cursor` back as `cursor` (with the same filters and sort). Cached
    for 1 s (see the module doc); `X-Cache: hit|miss`."""
    ctx = _ctx(request)
    since_ns = until_ns = None
    if start is not None or end is not None or since is not None:
        align = NS if end is None else 1
        since_ns, until_ns = window(start, end, since, default_since="100000d", align_ns=align)
    raw = repr(
        (
            sorted(status),
            sorted(agent),
            sorted(triage),
            since_ns,
            until_ns,
            q,
            sort.value,
            limit,
            cursor,
            ctx.task_writes.get(ident.tenant, 0),
        )
    )
    key = f"api:tasks:{ident.tenant}:{hashlib.sha256(raw.encode()).hexdigest()[:40]}"
    flt = TaskFilter(
        statuses=tuple(status),
        agents=tuple(agent),
        triage=tuple(triage),
        since_ns=since_ns,
        until_ns=until_ns,
        text=q,
        tenant=ident.tenant,
    )
    computed = False

    async def compute() -> bytes:
        nonlocal computed
        computed = True
        try:
            page = await ctx.backend.list_tasks(flt, sort=sort, limit=limit, cursor=cursor)
        except UsageError as exc:
            if cursor and "cursor" in str(exc):
                raise field_error(("query", "cursor"), str(exc), cursor) from None
            raise
        out = TaskPageOut(tasks=[TaskOut.of(t) for t in page.tasks], next_cursor=page.next_cursor)
        return out.model_dump_json().encode()

    # Requests for one page while it is being read share that read (the second's expiry would
    # otherwise send every polling dashboard to the task table at once).
    body = await get_or_compute(ctx.backend.cache, key, compute, TASKS_TTL_S)
    headers = {"X-Cache": "miss" if computed else "hit"}
    return Response(body, media_type="application/json", headers=headers)


@router.get("/tasks/{run_id}", response_model=TaskOut, summary="One run", responses=NOT_FOUND)
async def get_task(request: Request, ident: Viewer, run_id: RunIdPath) -> Response:
    task = await _ctx(request).backend.get_task(run_id, ident.tenant)
    return _json(TaskOut.of(task))


_MODEL_RE = r"^[A-Za-z0-9._:/@+-]{1,100}$"


def _sse(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _count_summary(ctx: AppContext, text: str, summary: Summary) -> None:
    """A stored summary replayed comes as ONE chunk carrying its whole text; a new one ends with
    an empty chunk. Only new ones count tokens and cost."""
    if text and text == summary.text:
        ctx.metrics.summary_requests.labels(ctx.metrics.model_label(summary.model), "cached").inc()
    else:
        ctx.metrics.record_summary(summary)


@router.get(
    "/tasks/{run_id}/summary",
    response_model=Summary,
    summary="A run's summary (cached; streams with Accept: text/event-stream)",
    responses={
        **NOT_FOUND,
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "example": 'event: chunk\ndata: {"text":"The run"}\n\n'
                    'event: summary\ndata: {"run_id":"r1","text":"The run ...", ...}\n\n',
                }
            }
        },
    },
)
async def task_summary(
    request: Request,
    ident: Viewer,
    run_id: RunIdPath,
    refresh: Annotated[bool, Query(description="Make a new one (operator)")] = False,
    model: Annotated[str | None, Query(pattern=_MODEL_RE, description="Model (operator)")] = None,
) -> Response:
    """The stored summary, or a new one. With `Accept: text/event-stream`, Server-Sent Events:
    `chunk` events (`{"text"}`) as the text is written, then one `summary` event (the stored
    summary), or an `error` event (`{"detail"}`)."""
    ctx = _ctx(request)
    if (refresh or model) and not ident.role.allows(Role.OPERATOR):
        raise HTTPException(403, "refresh and model need the operator role (they cost money)")
    if refresh:
        wait = await ctx.limiter.hit("expensive", ident.rate_key, "summary-refresh")
        if wait is not None:
            ctx.metrics.rate_limited.labels("expensive").inc()
            raise HTTPException(429, "too many summary refreshes", {"Retry-After": str(int(wait))})
    backend = ctx.backend
    await backend.get_task(run_id, ident.tenant)  # a 404 before any stream starts
    chunks = backend.summarize(run_id, refresh=refresh, model=model, tenant=ident.tenant)
    if "text/event-stream" in request.headers.get("accept", ""):

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if chunk.text:
                        yield _sse("chunk", {"text": chunk.text})
                    if chunk.summary is not None:
                        _count_summary(ctx, chunk.text, chunk.summary)
                        yield _sse("summary", dataclasses.asdict(chunk.summary))
            except AgentlogError as exc:
                yield _sse("error", {"detail": str(exc)})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    last: Summary | None = None
    async for chunk in chunks:
        if chunk.summary is not None:
            _count_summary(ctx, chunk.text, chunk.summary)
            last = chunk.summary
    if last is None:
        raise HTTPException(500, "the summarizer ended without a summary")
    return Response(orjson.dumps(last), media_type="application/json")


class StatusIn(BaseModel):
    """A status change (end a running run by hand) and/or a triage change."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["succeeded", "failed", "cancelled", "timeout"] | None = None
    triage: TriageState | None = None
    note: str = Field("", max_length=2000)

    @model_validator(mode="after")
    def _something(self) -> StatusIn:
        if self.status is None and self.triage is None:
            raise ValueError("give status, triage or both")
        return self


@router.put(
    "/tasks/{run_id}/status",
    response_model=TaskOut,
    summary="Change a run's status and/or triage state",
    responses={**NOT_FOUND, 409: {**_ERR, "description": "Transition not allowed"}},
)
async def put_status(
    request: Request, ident: Operator, run_id: RunIdPath, body: Annotated[StatusIn, Body()]
) -> Response:
    """Status: only a running (or stalled) run can be ended, with a terminal status. Triage:
    new -> acked/resolved/ignored, acked -> resolved/ignored/new, resolved -> new/acked,
    ignored -> new. A forbidden change is a 409 (the status is applied before the triage).
    The triage is recorded as set by the caller (the token's subject)."""
    ctx = _ctx(request)
    backend = ctx.backend
    task = None
    try:
        if body.status is not None:
            task = await backend.set_status(run_id, body.status, tenant=ident.tenant)
        if body.triage is not None:
            task = await backend.set_triage(
                run_id, body.triage, by=ident.subject, note=body.note, tenant=ident.tenant
            )
    finally:
        # The caller's next task list shows the change (not a cached page from before it);
        # also when the status went through and the triage was refused.
        ctx.task_writes[ident.tenant] = ctx.task_writes.get(ident.tenant, 0) + 1
    assert task is not None
    return _json(TaskOut.of(task))


# ---------------------------------------------------------------- /api/analytics


@router.get("/analytics/overview", response_model=Overview, summary="Run and log figures")
async def overview(
    request: Request,
    ident: Viewer,
    start: TimeParam = None,
    end: TimeParam = None,
    since: SinceParam = None,
) -> Overview:
    """Runs by status, success rate, active and stalled runs, error lines, log volume, tokens and
    cost, for the window and the one before it."""
    s, e = window(start, end, since, align_ns=NS if end is None else 1)
    return await _ctx(request).backend.overview(s, e, tenant=ident.tenant)


@router.get("/analytics/failures", response_model=PatternReport, summary="Failure patterns")
async def failures(
    request: Request,
    ident: Viewer,
    start: TimeParam = None,
    end: TimeParam = None,
    since: SinceParam = None,
    agent: Annotated[str | None, Query(max_length=200)] = None,
    run_id: Annotated[str | None, Query(max_length=RUN_ID_MAX)] = None,
    buckets: Annotated[int, Query(ge=1, le=200)] = 30,
) -> PatternReport:
    """Error templates and agent failure signals (loops, retry storms, stalls), each with its
    count, affected runs, trend and whether it is new against the previous window. Windows
    relative to now are aligned to 5 s, so refreshes share the facade's cache."""
    s, e = window(start, end, since, align_ns=5 * NS if end is None else 1)
    return await _ctx(request).backend.failure_patterns(
        s, e, agent=agent or None, run_id=run_id or None, buckets=buckets, tenant=ident.tenant
    )


@router.get("/analytics/performance", response_model=Performance, summary="Durations and LLM use")
async def performance(
    request: Request,
    ident: Viewer,
    start: TimeParam = None,
    end: TimeParam = None,
    since: SinceParam = None,
    buckets: Annotated[int, Query(ge=1, le=200)] = 24,
) -> Performance:
    """Run durations (p50/p95/p99 seconds) by agent, task and time bucket; runs per hour; LLM
    calls' latency, tokens and cost by model."""
    s, e = window(start, end, since, align_ns=NS if end is None else 1)
    return await _ctx(request).backend.performance(s, e, buckets=buckets, tenant=ident.tenant)


class CacheStatsOut(BaseModel):
    level: str
    hits: int
    misses: int
    hit_rate: float
    sets: int
    evictions: int
    expirations: int
    size: int
    max_size: int

    @classmethod
    def of(cls, c: CacheStats) -> CacheStatsOut:
        return cls(
            level=c.level,
            hits=c.hits,
            misses=c.misses,
            hit_rate=c.hit_rate,
            sets=c.sets,
            evictions=c.evictions,
            expirations=c.expirations,
            size=c.size,
            max_size=c.max_size,
        )


@router.get("/analytics/cache-stats", response_model=list[CacheStatsOut], summary="Cache figures")
async def cache_stats(request: Request, ident: Viewer) -> list[CacheStatsOut]:
    """Hits, misses and sizes of each cache level (process-wide, not per tenant)."""
    return [CacheStatsOut.of(c) for c in await _ctx(request).backend.cache_stats()]


# ---------------------------------------------------------------- /api/whoami, /api/admin


class WhoAmIOut(BaseModel):
    subject: str
    role: Role
    tenant: str
    method: Literal["jwt", "apikey", "none"]


@router.get("/whoami", response_model=WhoAmIOut, summary="The caller's identity")
async def whoami(ident: Viewer) -> WhoAmIOut:
    return WhoAmIOut(
        subject=ident.subject,
        role=ident.role,
        tenant=ident.tenant,
        method=ident.method,  # type: ignore[arg-type]
    )


class ApiKeyOut(BaseModel):
    key_id: str
    tenant: str
    role: Role
    name: str
    created_at: int
    created_by: str
    last_used_at: int | None
    revoked_at: int | None

    @classmethod
    def of(cls, k: ApiKey) -> ApiKeyOut:
        return cls(
            key_id=k.key_id,
            tenant=k.tenant,
            role=k.role,
            name=k.name,
            created_at=k.created_at,
            created_by=k.created_by,
            last_used_at=k.last_used_at,
            revoked_at=k.revoked_at,
        )


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Role.OPERATOR
    name: str = Field("", max_length=200)


class NewApiKeyOut(BaseModel):
    key: ApiKeyOut
    secret: str = Field(description="Shown once: only its hash is stored")


def _keys(ctx: AppContext) -> Any:
    if ctx.auth.keys is None:
        raise HTTPException(400, "this server has no API key store")
    return ctx.auth.keys


@router.get("/admin/apikeys", response_model=list[ApiKeyOut], summary="API keys of the tenant")
async def list_keys(
    request: Request, ident: AdminRead, include_revoked: bool = False
) -> list[ApiKeyOut]:
    keys = await _keys(_ctx(request)).list_keys(ident.tenant, include_revoked=include_revoked)
    return [ApiKeyOut.of(k) for k in keys]


@router.post(
    "/admin/apikeys", response_model=NewApiKeyOut, status_code=201, summary="Make an API key"
)
async def create_key(
    request: Request, ident: Admin, body: Annotated[ApiKeyIn, Body()]
) -> NewApiKeyOut:
    """A key for the caller's tenant with the given role (default operator: pushers)."""
    new = await _keys(_ctx(request)).create(
        ident.tenant, body.role, name=body.name, created_by=ident.who
    )
    return NewApiKeyOut(key=ApiKeyOut.of(new.key), secret=new.secret)


@router.delete(
    "/admin/apikeys/{key_id}",
    response_model=ApiKeyOut,
    summary="Revoke an API key",
    responses={404: {**_ERR, "description": "No such key"}},
)
async def revoke_key(
    request: Request, ident: Admin, key_id: Annotated[str, PathParam(max_length=40)]
) -> ApiKeyOut:
    return ApiKeyOut.of(await _keys(_ctx(request)).revoke(key_id, ident.tenant))


# ---------------------------------------------------------------- health and metrics


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str


@public.get("/health", response_model=HealthOut, summary="Liveness (no auth)", tags=["health"])
async def health() -> HealthOut:
    return HealthOut(status="ok", version=__version__)


class DetailedHealthOut(BaseModel):
    status: HealthState = Field(description="The worst state of any source")
    ready: bool
    auth: bool = Field(description="Whether authentication is on")
    sources: list[SourceHealth]


@public.get(
    "/health/detailed",
    response_model=DetailedHealthOut,
    summary="Each source's state, latency and reason",
    tags=["health"],
    responses=COMMON_RESPONSES,
)
async def health_detailed(request: Request, ident: Viewer) -> DetailedHealthOut:
    ctx = _ctx(request)
    sources = await ctx.backend.health()
    worst = HealthState.OK
    for s in sources:
        if s.state == HealthState.DOWN:
            worst = HealthState.DOWN
        elif s.state == HealthState.DEGRADED and worst == HealthState.OK:
            worst = HealthState.DEGRADED
    return DetailedHealthOut(status=worst, ready=ctx.ready, auth=ctx.auth.enabled, sources=sources)


def _scrape_tenants(ctx: AppContext, ident: Identity) -> list[str]:
    if ident.role.allows(Role.ADMIN):
        return sorted({ctx.default_tenant, ident.tenant, *ctx.tenants})[:100]
    return [ident.tenant]


@public.get(
    "/metrics",
    summary="Prometheus metrics (text format 0.0.4)",
    tags=["metrics"],
    response_class=Response,
    responses={
        **COMMON_RESPONSES,
        200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}},
    },
)
async def metrics(request: Request, ident: Viewer) -> Response:
    """Families labelled by tenant show the caller's tenant only (an admin sees all)."""
    ctx = _ctx(request)
    scrape = await ctx.metrics.collect(
        ctx.backend, _scrape_tenants(ctx, ident), rate_limit_errors=ctx.limiter.errors
    )
    return Response(scrape.text(), media_type=CONTENT_TYPE)


class MetricSampleOut(BaseModel):
    name: str
    labels: dict[str, str]
    value: float | str


class MetricFamilyOut(BaseModel):
    name: str
    type: str
    help: str
    samples: list[MetricSampleOut]


class MetricsOut(BaseModel):
    metrics: list[MetricFamilyOut]


@public.get(
    "/metrics/json",
    response_model=MetricsOut,
    summary="The same metrics as JSON",
    tags=["metrics"],
    responses=COMMON_RESPONSES,
)
async def metrics_json(request: Request, ident: Viewer) -> Response:
    ctx = _ctx(request)
    scrape = await ctx.metrics.collect(
        ctx.backend, _scrape_tenants(ctx, ident), rate_limit_errors=ctx.limiter.errors
    )
    return Response(orjson.dumps(scrape.json()), media_type="application/json")
