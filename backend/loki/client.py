"""`LokiLogSource`: ports.LogSource over Grafana Loki's HTTP API (httpx2) and its tail WebSocket
(websockets). It gives the same answers as the embedded store for the same queries; the embedded
store's own Loki API (`agentlog serve`) is what the tests run it against.

Requests (reference: ../shared/reference/loki-http-api.md):

- `X-Scope-OrgID`: the call's `tenant` when it is not the default (`fake`), else `loki.tenant`
  (empty: no header, which a Loki with auth off reads as `fake`). Basic auth (`loki.username` /
  `loki.password`) or a bearer token; TLS verification and CA file; `loki.timeout`.
- Times are sent as integer nanoseconds (RFC3339Nano for the few values too short to read as ns).
- Log queries always go through `query_range`, also when asked as an instant query (Loki 3.2+
  answers an instant log query with 400): `query_instant` of a log query returns the entries of
  the hour before `time` (Loki's default `since`), `time` included.
- Results are asked with `X-Loki-Response-Encoding-Flags: categorize-labels`, so each entry's
  structured metadata comes back apart (`LogEntry.metadata`), and the label set of each result
  stream is rebuilt as Loki's default answer has it (indexed labels + metadata + parsed labels),
  grouped the same way. A Loki that ignores the flag still works; metadata is then empty.
- Sample times of metric results come back with millisecond precision (Loki writes them so);
  the ordering of result streams and series means nothing (as in Loki).

Limits (section 6):

- `limit` above `loki.max_entries_per_query` is served by paging: backward, the next `end` is the
  oldest timestamp received + 1 ns; forward, the next `start` is the newest received; entries at
  that boundary timestamp already received are dropped (counted per stream and line, since
  several may share a nanosecond). If more entries than one page share a single nanosecond, the
  rest of that nanosecond cannot be reached (Loki has no cursor) and paging moves past it.
  When Loki's own cap is lower (400 "max entries limit per query exceeded ... (X > Y)"), the
  adapter adopts Y for the rest of its life (with a warning) and pages instead of failing.
- Ranges longer than `loki.split_interval` are split at multiples of it. Log queries run the
  pieces in the query's direction, at most `loki.max_parallel` at once, and stop when `limit` is
  reached. Metric queries are split on the step grid (each sample is evaluated on its own
  window, so the pieces give exactly the unsplit answer), the step computed first (Loki's
  default when none is given) and the 11,000-point check made on the whole range as Loki does.

Errors: 400 -> `QueryError` with Loki's plain-text message (`LogQLSyntaxError` for a parse error,
with its line and column); 429 -> wait (`Retry-After`, else backoff) and retry; 5xx, timeouts and
connection errors -> retry with jittered exponential backoff; all of it within one `loki.timeout`
per call, then `ServiceUnavailable` in plain words naming the URL and the setting. A server that
accepts and never answers costs at most `loki.timeout`.

Tail: reconnects by itself with backoff. On a reconnect it first fetches what it missed with
`query_range` (forward, from the newest timestamp delivered, all of it, paged), then reopens the
tail from the newest timestamp it has (backfill limit: max_entries_per_query, to cover the
moment in between); entries at that timestamp already delivered are dropped, so there is
neither gap nor duplicate. (A tail cut before it delivered anything takes its backfill by query
instead: the newest `limit` before it connected, then every line since.) Lines that arrive
late with a timestamp older than the newest delivered one are not fetched again after a cut,
as with Loki's own clients. `dropped_entries` frames become `TailBatch.dropped`. A 1011 close with
"reached tail max duration limit" (Loki's hourly cut) reconnects at once; another 1011 reason (too
many tails, ...) is reported through `health()` and `tail_problem`, and retried with backoff.

Health: GET `/ready` with a short timeout: ok; degraded when slow (over `slow_threshold`) or
answering 5xx; down when refused, reset or silent; with the reason and since when.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode

import httpx2
import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    WebSocketException,
)

from ..config import LokiSettings
from ..errors import (
    AgentlogError,
    LogQLSyntaxError,
    LogQLUnsupportedError,
    QueryError,
    ServiceUnavailable,
)
from ..logql import ast
from ..logql.parser import parse
from ..models import (
    DEFAULT_TENANT,
    Direction,
    HealthState,
    Labels,
    LogEntry,
    MatrixResult,
    MatrixSeries,
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
    VectorSample,
)

__all__ = ["LokiLogSource"]

log = logging.getLogger(__name__)

NS: Final = 1_000_000_000
DEFAULT_SINCE_NS: Final = 3600 * NS  # Loki's default `since` (instant log questions, tail)
FUTURE_GRACE_NS: Final = 10 * 60 * NS  # Loki's creation_grace_period: newest ts a store accepts
MAX_POINTS: Final = 11_000
CATEGORIZE: Final = "categorize-labels"
TAIL_MAX_DURATION: Final = "reached tail max duration limit"
SETTING_HINT: Final = "check loki.url (LOKI_URL) and that Loki is running"
LONG_URL: Final = 4000  # longer GET query strings go as a POST form instead

_LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Labels) -> _LabelKey:
    return tuple(sorted(labels.items()))


def fmt_ns(ns: int) -> str:
    """A time parameter Loki reads back exactly: integer ns (more than 10 digits), or RFC3339Nano
    for values that short (they would be read as seconds)."""
    if ns >= 10_000_000_000:
        return str(ns)
    ns = max(ns, 0)
    sec, frac = divmod(ns, NS)
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=sec)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def fmt_seconds(ns: int) -> str:
    """A duration in float seconds, written exactly (Loki's `step` accepts this form)."""
    return f"{ns // NS}.{ns % NS:09d}"


def default_step_ns(start_ns: int, end_ns: int) -> int:
    """Loki's default step: max(1, floor((end - start) / 250)) whole seconds."""
    return max(1, (end_ns - start_ns) // NS // 250) * NS


_COMMENT = re.compile(r"#[^\n]*")


def is_log_query(query: str) -> bool:
    """True for a log query (a selector and a pipeline), False for a metric query. Uses the
    LogQL parser; a query outside its subset (real Loki knows more) is judged by its first
    character, since only a log query starts with a selector."""
    try:
        return isinstance(parse(query).expr, ast.LogQuery)
    except AgentlogError:
        return _COMMENT.sub("", query).lstrip().startswith("{")


_MAX_ENTRIES = re.compile(r"max entries limit per query exceeded.*\(\d+ > (\d+)\)")
_PARSE_ERROR = re.compile(r"parse error at line (\d+), col (\d+): (.*)", re.S)
_UNSUPPORTED = re.compile(r"unsupported LogQL: (.*) is not supported by this store", re.S)


def _query_error(text: str, query: str | None) -> QueryError:
    """Loki's 400 body as the error the embedded store raises for the same query."""
    m = _PARSE_ERROR.fullmatch(text)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
        pos = 0
        if query is not None:
            lines = query.split("\n")
            pos = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
        return LogQLSyntaxError(m.group(3), pos=pos, line=line, col=col)
    m = _UNSUPPORTED.fullmatch(text)
    if m:
        return LogQLUnsupportedError(m.group(1))
    return QueryError(text or "Loki rejected the query (400) without saying why")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _stats(data: dict[str, Any]) -> QueryStats:
    summary = (data.get("stats") or {}).get("summary") or {}
    return QueryStats(
        exec_time=float(summary.get("execTime") or 0.0),
        lines_processed=int(summary.get("totalLinesProcessed") or 0),
        bytes_processed=int(summary.get("totalBytesProcessed") or 0),
        entries_returned=int(summary.get("totalEntriesReturned") or 0),
    )


def parse_streams(result: list[dict[str, Any]], direction: Direction) -> list[Stream]:
    """Loki's `streams` result as Streams. Values carrying categorized labels
    (`[ts, line, {"structuredMetadata":..., "parsed":...}]`) are merged back into one label set
    per entry (indexed + metadata + parsed) and grouped by it, as Loki's default answer is."""
    out: list[Stream] = []
    groups: dict[_LabelKey, Stream] = {}
    multi: set[_LabelKey] = set()
    for s in result:
        base: Labels = s.get("stream") or {}
        values: list[list[Any]] = s.get("values") or []
        if not any(len(v) > 2 and v[2] for v in values):
            key = _key(base)
            entries = [LogEntry(int(v[0]), v[1], {}) for v in values]
            g = groups.get(key)
            if g is None:
                g = groups[key] = Stream(base, entries)
                out.append(g)
            else:
                g.entries.extend(entries)
                multi.add(key)
            continue
        # Entries of one result stream repeat the same few metadata sets (a run id, ...): the
        # merged label set and its group are worked out once per distinct set.
        memo: dict[tuple[tuple[tuple[str, str], ...], ...], Stream] = {}
        here: set[int] = set()  # id() of the groups this result stream feeds
        for v in values:
            extra: dict[str, Labels] | None = v[2] if len(v) > 2 else None
            meta = (extra.get("structuredMetadata") if extra else None) or {}
            parsed = (extra.get("parsed") if extra else None) or {}
            mk = (tuple(meta.items()), tuple(parsed.items()))
            g = memo.get(mk)
            if g is None:
                labels = {**base, **meta, **parsed} if meta or parsed else base
                key = _key(labels)
                g = groups.get(key)
                if g is None:
                    g = groups[key] = Stream(dict(labels), [])
                    out.append(g)
                elif id(g) not in here:
                    multi.add(key)  # fed by two result streams: restore the order below
                here.add(id(g))
                memo[mk] = g
            g.entries.append(LogEntry(int(v[0]), v[1], meta))
    for key in multi:
        groups[key].entries.sort(key=lambda e: e.ts, reverse=direction == Direction.BACKWARD)
    return out


def parse_result(data: dict[str, Any], direction: Direction = Direction.BACKWARD) -> QueryResult:
    """Loki's `data` object (streams, matrix, vector or scalar) as a result dataclass. Sample
    values are strings (`"NaN"`, `"+Inf"` included); sample times are Unix seconds."""
    kind = data.get("resultType")
    result = data.get("result")
    stats = _stats(data)
    if kind == "streams":
        return StreamsResult(parse_streams(result or [], direction), stats)
    if kind == "matrix":
        return MatrixResult(
            [
                MatrixSeries(s.get("metric") or {}, [(float(t), float(v)) for t, v in s["values"]])
                for s in result or []
            ],
            stats,
        )
    if kind == "vector":
        return VectorResult(
            [
                VectorSample(s.get("metric") or {}, float(s["value"][0]), float(s["value"][1]))
                for s in result or []
            ],
            stats,
        )
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return ScalarResult(float(result[0]), float(result[1]), stats)
    raise ServiceUnavailable(f"Loki answered a result of an unknown type {kind!r}")


@dataclass(slots=True)
class _Rows:
    """Log entries of one (paged) fetch, flattened, in the query's direction."""

    items: list[_Item] = field(default_factory=list)
    lines: int = 0
    nbytes: int = 0


_Item = tuple[int, _LabelKey, Labels, LogEntry]


def _flatten(streams: Sequence[Stream], direction: Direction) -> list[_Item]:
    items = [(e.ts, k, s.labels, e) for s in streams for k in (_key(s.labels),) for e in s.entries]
    items.sort(key=lambda it: it[0], reverse=direction == Direction.BACKWARD)
    return items


def _regroup(items: Iterable[_Item]) -> list[Stream]:
    groups: dict[_LabelKey, Stream] = {}
    for _ts, key, labels, entry in items:
        g = groups.get(key)
        if g is None:
            g = groups[key] = Stream(labels, [])
        g.entries.append(entry)
    return list(groups.values())


def _split_points(start_ns: int, end_ns: int, interval_ns: int) -> list[tuple[int, int]]:
    """[start, end) cut at the multiples of `interval_ns` (as Loki's frontend splits)."""
    pieces = []
    lo = start_ns
    while lo < end_ns:
        hi = min(end_ns, (lo // interval_ns + 1) * interval_ns)
        pieces.append((lo, hi))
        lo = hi
    return pieces


class LokiLogSource:
    """ports.LogSource over Loki's HTTP API and tail WebSocket (see the module docstring).

    `client`: an httpx2.AsyncClient to use (the caller keeps owning it; TLS and pool settings
    are then the caller's). Without one, the adapter makes its own from the settings.
    `slow_threshold`: seconds over which a /ready answer makes the state DEGRADED.
    `health_timeout`: the most a health probe waits (default: min(loki.timeout, 5 s)).
    `retries`: retries after the first attempt of a request (within `loki.timeout` in total).
    """

    kind: Final = "loki"

    def __init__(
        self,
        settings: LokiSettings,
        *,
        client: httpx2.AsyncClient | None = None,
        slow_threshold: float = 1.0,
        health_timeout: float | None = None,
        retries: int = 3,
        backoff_initial: float = 0.1,
        backoff_max: float = 2.0,
        tail_backoff_max: float = 10.0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.url = str(settings.url).rstrip("/")
        self.timeout = float(settings.timeout)
        self.max_entries_per_query = int(settings.max_entries_per_query)
        self.split_interval_ns = int(float(settings.split_interval) * NS)
        self.max_parallel = int(settings.max_parallel)
        self.slow_threshold = slow_threshold
        self.health_timeout = health_timeout or min(self.timeout, 5.0)
        self.retries = retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.tail_backoff_max = tail_backoff_max
        self._clock = clock
        self._ssl = self._ssl_context()
        self._auth: httpx2.BasicAuth | None = None
        self._headers: dict[str, str] = {}
        if settings.bearer_token:
            self._headers["Authorization"] = f"Bearer {settings.bearer_token}"
        elif settings.username:
            self._auth = httpx2.BasicAuth(settings.username, settings.password)
        self._owns_client = client is None
        self._client = client or httpx2.AsyncClient(
            verify=self._ssl if self._ssl is not None else settings.tls_verify,
            timeout=httpx2.Timeout(self.timeout),
            limits=httpx2.Limits(
                max_connections=max(16, self.max_parallel * 4),
                max_keepalive_connections=max(8, self.max_parallel * 2),
            ),
        )
        self._state = HealthState.OK
        self._reason = ""
        self._since = clock()
        self._latency_ms: float | None = None
        self.requests_sent = 0  # HTTP requests (attempts) made, for tests and stats
        self.retries_made = 0
        self.tail_reconnects = 0
        self._tail_problems: dict[int, str] = {}  # per live tail: why it is not running
        self._tail_ids = 0

    # ------------------------------------------------------------------ plumbing

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not self.url.startswith("https") and s.ca_file is None:
            return None
        ctx = ssl.create_default_context(cafile=str(s.ca_file) if s.ca_file else None)
        if not s.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _tenant_headers(self, tenant: str) -> dict[str, str]:
        headers = dict(self._headers)
        org = tenant if tenant and tenant != DEFAULT_TENANT else self.settings.tenant
        if org:
            headers["X-Scope-OrgID"] = org
        return headers

    def _unavailable(self, what: str, reason: str, attempts: int) -> ServiceUnavailable:
        tries = f" (tried {attempts} times)" if attempts > 1 else ""
        return ServiceUnavailable(
            f"Loki at {self.url}: {what} failed: {reason}{tries}; {SETTING_HINT}"
        )

    def _set_state(self, state: HealthState, reason: str) -> None:
        if state != self._state:
            self._since = self._clock()
        self._state, self._reason = state, reason

    def _backoff(self, attempt: int) -> float:
        d: float = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        return d * random.uniform(0.5, 1.0)  # jitter: clients that failed together spread out

    async def _request(
        self,
        method: str,
        path: str,
        *,
        tenant: str,
        params: Sequence[tuple[str, str]] = (),
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        what: str = "request",
        query: str | None = None,
    ) -> httpx2.Response:
        """One Loki call with retries, all within `loki.timeout`. Returns a 2xx response (and a
        400 only for push, whose body lists rejected entries); raises QueryError or
        ServiceUnavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        hdrs = self._tenant_headers(tenant)
        if headers:
            hdrs.update(headers)
        url = self.url + path
        if method == "GET" and len(urlencode(params)) > LONG_URL:
            method, content = "POST", urlencode(params).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            params = ()
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            delay: float | None = None
            state = HealthState.DOWN
            try:
                self.requests_sent += 1
                async with asyncio.timeout(max(remaining, 0.001)):
                    resp = await self._client.request(
                        method,
                        url,
                        params=list(params) or None,
                        content=content,
                        headers=hdrs,
                        auth=self._auth if self._auth is not None else httpx2.USE_CLIENT_DEFAULT,
                        timeout=httpx2.Timeout(max(remaining, 0.001)),
                    )
            except (TimeoutError, httpx2.TimeoutException):
                reason = f"no answer within {self.timeout:g} s (loki.timeout)"
            except httpx2.TransportError as exc:
                reason = _describe_transport(exc)
            else:
                code = resp.status_code
                if code < 300 or (code == 400 and path.endswith("/push")):
                    if self._state == HealthState.DOWN:
                        self._set_state(HealthState.OK, "")
                    return resp
                text = resp.text.strip()
                if code == 400:
                    raise _query_error(text, query)
                if code in (401, 403):
                    raise ServiceUnavailable(
                        f"Loki at {self.url} refused the credentials "
                        f"({code}: {text or 'no body'}); check loki.username / loki.password "
                        "or loki.bearer_token, and loki.tenant"
                    )
                if code == 404:
                    raise ServiceUnavailable(
                        f"Loki at {self.url} has no {path} (404); loki.url must be Loki's base "
                        "URL, without /loki/api/v1"
                    )
                if code in (413, 422):
                    raise QueryError(f"Loki refused the {what} ({code}): {text}")
                if code == 429:
                    reason = f"Loki is rate-limiting (429: {text or 'too many requests'})"
                    delay = _retry_after(resp.headers.get("retry-after"))
                    state = HealthState.DEGRADED
                elif code >= 500:
                    reason = f"Loki answered {code}" + (f": {text}" if text else "")
                    state = HealthState.DEGRADED
                else:
                    raise ServiceUnavailable(
                        f"Loki at {self.url} answered {code} to {what}: {text}"
                    )
            if delay is None:
                delay = self._backoff(attempt)
            if attempt > self.retries or loop.time() + delay >= deadline:
                self._set_state(state, reason)
                raise self._unavailable(what, reason, attempt)
            self.retries_made += 1
            await asyncio.sleep(delay)

    async def _get_json(
        self,
        path: str,
        params: Sequence[tuple[str, str]],
        *,
        tenant: str,
        what: str,
        query: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        resp = await self._request(
            "GET", path, tenant=tenant, params=params, what=what, query=query, headers=headers
        )
        try:
            body = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise self._unavailable(what, "the answer is not JSON (is loki.url Loki?)", 1) from None
        if isinstance(body, dict) and body.get("status") not in (None, "success"):
            raise QueryError(str(body.get("error") or body))
        return body

    # ------------------------------------------------------------------ push

    async def push(self, streams: Sequence[Stream], tenant: str = DEFAULT_TENANT) -> PushResult:
        """POST /loki/api/v1/push (JSON, structured metadata as a third value element). Loki
        acknowledges with 204 once the entries are stored; a partial failure (400) lists the
        rejected entries (up to 10) and the total. Loki drops exact duplicates silently, so they
        count as accepted here."""
        body = {
            "streams": [
                {
                    "stream": s.labels,
                    "values": [
                        [str(e.ts), e.line, e.metadata] if e.metadata else [str(e.ts), e.line]
                        for e in s.entries
                    ],
                }
                for s in streams
                if s.entries
            ]
        }
        total = sum(len(s.entries) for s in streams)
        if not total:
            return PushResult()
        resp = await self._request(
            "POST",
            "/loki/api/v1/push",
            tenant=tenant,
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            what="push",
        )
        if resp.status_code != 400:
            return PushResult(accepted=total)
        return _partial_failure(resp.text, streams, total)

    # ------------------------------------------------------------------ queries

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
        if is_log_query(query):
            return await self._log_range(query, start_ns, end_ns, limit, direction, tenant)
        return await self._metric_range(query, start_ns, end_ns, limit, direction, step_ns, tenant)

    async def query_instant(
        self,
        query: str,
        time_ns: int,
        *,
        limit: int = 100,
        direction: Direction = Direction.BACKWARD,
        tenant: str = DEFAULT_TENANT,
    ) -> QueryResult:
        """A metric query at one instant (vector or scalar). A log query goes to query_range over
        the hour before `time_ns`, `time_ns` included (Loki 3.2+ refuses it on /query)."""
        if is_log_query(query):
            return await self._log_range(
                query, time_ns - DEFAULT_SINCE_NS, time_ns + 1, limit, direction, tenant
            )
        params = [
            ("query", query),
            ("time", fmt_ns(time_ns)),
            ("limit", str(limit)),
            ("direction", direction.value),
        ]
        body = await self._get_json(
            "/loki/api/v1/query", params, tenant=tenant, what="instant query", query=query
        )
        return parse_result(body.get("data") or {}, direction)

    async def _fetch(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        tenant: str,
        step_ns: int | None = None,
    ) -> QueryResult:
        """One query_range request."""
        params = [
            ("query", query),
            ("start", fmt_ns(start_ns)),
            ("end", fmt_ns(end_ns)),
            ("limit", str(limit)),
            ("direction", direction.value),
        ]
        if step_ns is not None:
            params.append(("step", fmt_seconds(step_ns)))
        body = await self._get_json(
            "/loki/api/v1/query_range",
            params,
            tenant=tenant,
            what="query_range",
            query=query,
            headers={"X-Loki-Response-Encoding-Flags": CATEGORIZE},
        )
        return parse_result(body.get("data") or {}, direction)

    async def _log_range(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        tenant: str,
    ) -> StreamsResult:
        if limit <= 0:
            raise QueryError("limit must be a positive value")
        try:
            return await self._log_range_once(query, start_ns, end_ns, limit, direction, tenant)
        except QueryError as exc:
            # Loki's own cap is lower than loki.max_entries_per_query: learn it and page.
            m = _MAX_ENTRIES.search(str(exc))
            if m is None or int(m.group(1)) >= self.max_entries_per_query:
                raise
            log.warning(
                "Loki at %s allows %s entries per query; loki.max_entries_per_query is %s: "
                "paging with Loki's limit",
                self.url,
                m.group(1),
                self.max_entries_per_query,
            )
            self.max_entries_per_query = int(m.group(1))
            return await self._log_range_once(query, start_ns, end_ns, limit, direction, tenant)

    async def _log_range_once(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        tenant: str,
    ) -> StreamsResult:
        t0 = time.perf_counter()
        split = self.split_interval_ns
        if split <= 0 or end_ns - start_ns <= split:
            if limit <= self.max_entries_per_query:  # the common case: one request, as it came
                res = await self._fetch(query, start_ns, end_ns, limit, direction, tenant)
                if not isinstance(res, StreamsResult):
                    raise QueryError(f"expected a log query, got a {res.result_type} result")
                return res
            rows = await self._paged(query, start_ns, end_ns, limit, direction, tenant)
        else:
            rows = await self._split_log(query, start_ns, end_ns, limit, direction, tenant)
        items = rows.items[:limit]
        stats = QueryStats(
            exec_time=time.perf_counter() - t0,
            lines_processed=rows.lines,
            bytes_processed=rows.nbytes,
            entries_returned=len(items),
        )
        return StreamsResult(_regroup(items), stats)

    async def _paged(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        tenant: str,
    ) -> _Rows:
        """Up to `limit` entries of [start, end), in pages of at most max_entries_per_query
        (Loki has no cursor: see the module docstring)."""
        page = self.max_entries_per_query
        out = _Rows()
        lo, hi = start_ns, end_ns
        edge_ts: int | None = None
        edge_seen: Counter[tuple[_LabelKey, str]] = Counter()  # delivered entries at edge_ts
        backward = direction == Direction.BACKWARD
        while len(out.items) < limit and lo < hi:
            want = min(page, limit - len(out.items) + sum(edge_seen.values()))
            res = await self._fetch(query, lo, hi, want, direction, tenant)
            if not isinstance(res, StreamsResult):
                raise QueryError(f"expected a log query, got a {res.result_type} result")
            out.lines += res.stats.lines_processed
            out.nbytes += res.stats.bytes_processed
            got = _flatten(res.streams, direction)
            skip = Counter(edge_seen)
            fresh = []
            for item in got:
                if item[0] == edge_ts:
                    k = (item[1], item[3].line)
                    if skip[k] > 0:
                        skip[k] -= 1
                        continue
                fresh.append(item)
            out.items.extend(fresh[: limit - len(out.items)])
            if len(got) < want:
                break  # the range is exhausted
            last = got[-1][0]  # the oldest (backward) or newest (forward) timestamp received
            if not fresh:
                # A full page of one nanosecond, all seen: no way to reach the rest of it.
                if backward:
                    hi = last
                else:
                    lo = last + 1
                edge_ts, edge_seen = None, Counter()
                continue
            if last != edge_ts:
                edge_seen = Counter()
                edge_ts = last
            edge_seen.update((it[1], it[3].line) for it in fresh if it[0] == last)
            if backward:
                hi = last + 1
            else:
                lo = last
        return out

    async def _split_log(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        tenant: str,
    ) -> _Rows:
        """Pieces in the query's direction, at most max_parallel in flight; stops once `limit`
        entries are in hand (the pieces still running are cancelled)."""
        pieces = _split_points(start_ns, end_ns, self.split_interval_ns)
        if direction == Direction.BACKWARD:
            pieces.reverse()
        out = _Rows()
        running: list[tuple[asyncio.Task[_Rows], int, int]] = []
        nxt = 0
        try:
            while len(out.items) < limit and (running or nxt < len(pieces)):
                while nxt < len(pieces) and len(running) < self.max_parallel:
                    lo, hi = pieces[nxt]
                    task = asyncio.create_task(self._paged(query, lo, hi, limit, direction, tenant))
                    running.append((task, lo, hi))
                    nxt += 1
                task, lo, hi = running.pop(0)
                rows = await task
                need = limit - len(out.items)
                if len(rows.items) > need and rows.items[need - 1][0] == rows.items[need][0]:
                    # The cut falls among entries sharing a nanosecond: let Loki choose which,
                    # as one query with this limit would.
                    rows = await self._paged(query, lo, hi, need, direction, tenant)
                out.lines += rows.lines
                out.nbytes += rows.nbytes
                out.items.extend(rows.items[:need])
        finally:
            for t, _lo, _hi in running:
                t.cancel()
            if running:
                await asyncio.gather(*(t for t, _lo, _hi in running), return_exceptions=True)
        return out

    async def _metric_range(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        limit: int,
        direction: Direction,
        step_ns: int | None,
        tenant: str,
    ) -> QueryResult:
        step = step_ns if step_ns is not None else default_step_ns(start_ns, end_ns)
        if step <= 0:
            raise QueryError(
                "zero or negative query resolution step widths are not accepted. "
                "Try a positive integer"
            )
        if (end_ns - start_ns) // step > MAX_POINTS:
            raise QueryError(
                "exceeded maximum resolution of 11,000 points per timeseries. "
                "Try decreasing the query resolution (?step=XX)"
            )
        split = self.split_interval_ns
        per_piece = split // step if split > 0 else 0
        if per_piece < 2 or end_ns - start_ns <= split:
            return await self._fetch(query, start_ns, end_ns, limit, direction, tenant, step)
        # Pieces on the step grid: samples at start + k*step, each evaluated on its own window.
        pieces = []
        lo = start_ns
        while lo <= end_ns:
            hi = min(end_ns, lo + (per_piece - 1) * step)
            pieces.append((lo, hi))
            lo = hi + step
        sem = asyncio.Semaphore(self.max_parallel)

        async def run(lo: int, hi: int) -> QueryResult:
            async with sem:
                return await self._fetch(query, lo, hi, limit, direction, tenant, step)

        t0 = time.perf_counter()
        results = await _gather_all([run(lo, hi) for lo, hi in pieces])
        series: dict[_LabelKey, MatrixSeries] = {}
        stats = QueryStats()
        for res in results:
            if not isinstance(res, MatrixResult):
                raise QueryError(f"expected a matrix from a metric query, got {res.result_type}")
            stats.lines_processed += res.stats.lines_processed
            stats.bytes_processed += res.stats.bytes_processed
            for s in res.series:
                key = _key(s.metric)
                have = series.get(key)
                if have is None:
                    series[key] = MatrixSeries(s.metric, list(s.values))
                else:
                    have.values.extend(s.values)
        stats.exec_time = time.perf_counter() - t0
        return MatrixResult(list(series.values()), stats)

    # ------------------------------------------------------------------ metadata

    def _range_params(self, start_ns: int, end_ns: int, query: str | None) -> list[tuple[str, str]]:
        params = [("start", fmt_ns(start_ns)), ("end", fmt_ns(end_ns))]
        if query:
            params.append(("query", query))
        return params

    async def labels(
        self, start_ns: int, end_ns: int, query: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[str]:
        body = await self._get_json(
            "/loki/api/v1/labels",
            self._range_params(start_ns, end_ns, query),
            tenant=tenant,
            what="labels",
            query=query,
        )
        return sorted(str(x) for x in body.get("data") or [])

    async def label_values(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        query: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[str]:
        body = await self._get_json(
            f"/loki/api/v1/label/{quote(name, safe='')}/values",
            self._range_params(start_ns, end_ns, query),
            tenant=tenant,
            what="label values",
            query=query,
        )
        return sorted(str(x) for x in body.get("data") or [])

    async def series(
        self, selectors: Sequence[str], start_ns: int, end_ns: int, tenant: str = DEFAULT_TENANT
    ) -> list[Labels]:
        """No selector, or `{}` among them: all streams (sent without `match[]`)."""
        params = self._range_params(start_ns, end_ns, None)
        if not any(s.strip() in ("", "{}") for s in selectors):
            params += [("match[]", s) for s in selectors]
        body = await self._get_json("/loki/api/v1/series", params, tenant=tenant, what="series")
        return [dict(x) for x in body.get("data") or []]

    # ------------------------------------------------------------------ tail

    @property
    def tail_problem(self) -> str:
        """Why a live tail is not running right now ("" when every tail is fine)."""
        return "; ".join(p for p in self._tail_problems.values() if p)

    def _ws_url(self, query: str, start_ns: int, limit: int) -> str:
        base = "ws" + self.url[len("http") :] if self.url.startswith("http") else self.url
        qs = urlencode([("query", query), ("limit", str(limit)), ("start", fmt_ns(start_ns))])
        return f"{base}/loki/api/v1/tail?{qs}"

    def _ws_headers(self, tenant: str) -> dict[str, str]:
        headers = self._tenant_headers(tenant)
        headers["X-Loki-Response-Encoding-Flags"] = CATEGORIZE
        if self._auth is not None:
            raw = f"{self.settings.username}:{self.settings.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        return headers

    async def tail(
        self,
        query: str,
        start_ns: int | None = None,
        *,
        limit: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[TailBatch]:
        """Backfill up to `limit` newest entries since `start_ns` (default: an hour ago), then
        follow, reconnecting by itself without gap or duplicate (see the module docstring)."""
        if not is_log_query(query):
            raise QueryError("tail needs a log query (a stream selector and filters), not a metric")
        tracker = _Delivered()
        first_start = self._clock() - DEFAULT_SINCE_NS if start_ns is None else start_ns
        self._tail_ids += 1
        tid = self._tail_ids
        problems = self._tail_problems
        problems[tid] = ""
        inner = self._follow(query, first_start, limit, tenant, tracker, tid)
        try:
            async for batch in inner:
                yield batch
        finally:
            problems.pop(tid, None)
            await inner.aclose()  # closes the WebSocket now, not when collected

    async def _follow(
        self,
        query: str,
        first_start: int,
        limit: int,
        tenant: str,
        tracker: _Delivered,
        tid: int,
    ) -> AsyncGenerator[TailBatch, None]:
        problems = self._tail_problems
        backoff = self.backoff_initial
        ping = min(5.0, self.timeout)
        connected_at: int | None = None
        while True:
            delay = backoff
            try:
                if tracker.max_ts is None and connected_at is not None:
                    # Cut before anything came: the backfill by query (the newest `limit`
                    # before the connection), then every line since, as a live tail has them.
                    batch = await self._backfill(query, first_start, connected_at, limit, tenant)
                    tracker.add(batch.entries)
                    if batch.entries:
                        yield batch
                    if tracker.max_ts is None:
                        tracker.max_ts = first_start  # nothing before: catch up from the start
                if tracker.max_ts is None:
                    url = self._ws_url(query, first_start, limit)
                else:
                    # Fetch what was missed, then follow from the newest timestamp in hand.
                    async for batch in self._catch_up(query, tracker, tenant):
                        yield batch
                    assert tracker.max_ts is not None
                    url = self._ws_url(query, tracker.max_ts, self.max_entries_per_query)
                skip = tracker.snapshot()
                async with ws_connect(
                    url,
                    additional_headers=self._ws_headers(tenant),
                    open_timeout=self.timeout,
                    ping_interval=ping,
                    ping_timeout=ping,
                    close_timeout=1.0,
                    max_size=None,
                    ssl=self._ssl if self.url.startswith("https") else None,
                ) as ws:
                    if connected_at is None:
                        connected_at = self._clock()
                    problems[tid] = ""
                    if self._state == HealthState.DOWN:
                        self._set_state(HealthState.OK, "")
                    async for msg in ws:
                        batch = _tail_batch(orjson.loads(msg), skip, tracker)
                        if batch.entries or batch.dropped:
                            yield batch
                        backoff = self.backoff_initial
                problems[tid] = "Loki closed the tail"
            except ConnectionClosed as exc:
                rcvd = exc.rcvd
                if rcvd is not None and rcvd.code == 1011 and TAIL_MAX_DURATION in rcvd.reason:
                    delay = 0.0  # Loki's periodic cut: not a fault
                    problems[tid] = ""
                elif rcvd is not None and rcvd.code == 1011:
                    problems[tid] = f"Loki closed the tail (1011): {rcvd.reason}"
                    log.warning("%s; retrying in %.1f s", problems[tid], delay)
                else:
                    problems[tid] = f"tail connection lost: {exc}"
            except InvalidStatus as exc:
                code = exc.response.status_code
                raw = exc.response.body or b""
                text = raw.decode("utf-8", "replace").strip()
                if code == 400:
                    raise _query_error(text, query) from None
                if code in (401, 403):
                    raise ServiceUnavailable(
                        f"Loki at {self.url} refused the tail ({code}: {text}); check "
                        "loki.username / loki.password or loki.bearer_token, and loki.tenant"
                    ) from None
                problems[tid] = f"Loki answered {code} to the tail: {text or 'no body'}"
            except QueryError:
                raise
            except ServiceUnavailable as exc:  # the catch-up query: Loki still away
                problems[tid] = str(exc)
            except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
                problems[tid] = f"cannot open the tail at {self.url}: {_describe_os(exc)}"
            self.tail_reconnects += 1
            if delay > 0:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            backoff = min(self.tail_backoff_max, max(backoff, self.backoff_initial) * 2)

    async def _backfill(
        self, query: str, start_ns: int, end_ns: int, limit: int, tenant: str
    ) -> TailBatch:
        res = await self.query_range(query, start_ns, end_ns, limit=limit, tenant=tenant)
        assert isinstance(res, StreamsResult)
        entries = [TailEntry(s.labels, e) for s in res.streams for e in s.entries]
        entries.sort(key=lambda te: te.entry.ts)
        return TailBatch(entries=entries)

    async def _catch_up(
        self, query: str, tracker: _Delivered, tenant: str
    ) -> AsyncIterator[TailBatch]:
        """Entries from the newest delivered timestamp to now (what a broken tail missed)."""
        cap = 20 * self.max_entries_per_query
        while True:
            assert tracker.max_ts is not None
            skip = tracker.snapshot()
            end = self._clock() + FUTURE_GRACE_NS
            res = await self.query_range(
                query, tracker.max_ts, end, limit=cap, direction=Direction.FORWARD, tenant=tenant
            )
            assert isinstance(res, StreamsResult)
            n = sum(len(s.entries) for s in res.streams)
            entries = [TailEntry(s.labels, e) for s in res.streams for e in s.entries]
            entries.sort(key=lambda te: te.entry.ts)
            fresh = [te for te in entries if not skip.drop(te)]
            tracker.add(fresh)
            for i in range(0, len(fresh), 1000):
                yield TailBatch(entries=fresh[i : i + 1000])
            if n < cap:
                return

    # ------------------------------------------------------------------ health

    async def health(self) -> SourceHealth:
        """GET /ready: ok; degraded when slow or 5xx; down when unreachable or silent. Never
        raises, never waits past `health_timeout`."""
        t0 = time.perf_counter()
        state, reason = HealthState.OK, ""
        latency: float | None = None
        try:
            async with asyncio.timeout(self.health_timeout):
                resp = await self._client.get(
                    self.url + "/ready",
                    headers=self._tenant_headers(DEFAULT_TENANT),
                    auth=self._auth if self._auth is not None else httpx2.USE_CLIENT_DEFAULT,
                    timeout=httpx2.Timeout(self.health_timeout),
                )
            latency = (time.perf_counter() - t0) * 1000
            if resp.status_code >= 500:
                state = HealthState.DEGRADED
                reason = f"Loki answered /ready with {resp.status_code}: {resp.text.strip()[:200]}"
            elif resp.status_code != 200:
                state = HealthState.DEGRADED
                reason = f"Loki answered /ready with {resp.status_code}; {SETTING_HINT}"
            elif latency > self.slow_threshold * 1000:
                state = HealthState.DEGRADED
                reason = (
                    f"slow: /ready took {latency:.0f} ms (over {self.slow_threshold * 1000:.0f} ms)"
                )
        except (TimeoutError, httpx2.TimeoutException):
            state = HealthState.DOWN
            reason = f"no answer from /ready within {self.health_timeout:g} s; {SETTING_HINT}"
        except httpx2.TransportError as exc:
            state = HealthState.DOWN
            reason = f"{_describe_transport(exc)}; {SETTING_HINT}"
        if state == HealthState.OK and self.tail_problem:
            state, reason = HealthState.DEGRADED, self.tail_problem
        self._set_state(state, reason)
        self._latency_ms = latency
        return SourceHealth(
            name="logs",
            kind="loki",
            state=state,
            detail=self.url,
            reason=reason,
            since=self._since,
            latency_ms=latency,
        )

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


# ---------------------------------------------------------------------- helpers


async def _gather_all(coros: Sequence[Awaitable[QueryResult]]) -> list[QueryResult]:
    """gather that cancels the rest when one fails (no orphan requests)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _describe_os(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    return str(exc) or type(exc).__name__


def _describe_transport(exc: httpx2.TransportError) -> str:
    text = str(exc)
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return "connection refused"
        if isinstance(seen, ConnectionResetError) or "reset" in str(seen).lower():
            return "connection reset"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, httpx2.RemoteProtocolError):
        return f"the connection was dropped ({text or 'server disconnected'})"
    if isinstance(exc, httpx2.ConnectError):
        return f"cannot connect ({text or type(exc).__name__})"
    return text or type(exc).__name__


class _Skip:
    """Entries at one timestamp already delivered, to drop once each when they come again."""

    __slots__ = ("counts", "ts")

    def __init__(self, ts: int | None, counts: Counter[tuple[_LabelKey, str]]) -> None:
        self.ts = ts
        self.counts = counts

    def drop(self, te: TailEntry) -> bool:
        if te.entry.ts != self.ts:
            return False
        k = (_key(te.labels), te.entry.line)
        if self.counts[k] > 0:
            self.counts[k] -= 1
            return True
        return False


class _Delivered:
    """The newest timestamp delivered by a tail and the entries delivered at it."""

    __slots__ = ("at_max", "max_ts")

    def __init__(self) -> None:
        self.max_ts: int | None = None
        self.at_max: Counter[tuple[_LabelKey, str]] = Counter()

    def add(self, entries: Iterable[TailEntry]) -> None:
        for te in entries:
            ts = te.entry.ts
            if self.max_ts is None or ts > self.max_ts:
                self.max_ts = ts
                self.at_max = Counter()
            if ts == self.max_ts:
                self.at_max[(_key(te.labels), te.entry.line)] += 1

    def snapshot(self) -> _Skip:
        return _Skip(self.max_ts, Counter(self.at_max))


def _tail_batch(frame: dict[str, Any], skip: _Skip, tracker: _Delivered) -> TailBatch:
    entries: list[TailEntry] = []
    for s in parse_streams(frame.get("streams") or [], Direction.FORWARD):
        for e in s.entries:
            te = TailEntry(s.labels, e)
            if not skip.drop(te):
                entries.append(te)
    entries.sort(key=lambda te: te.entry.ts)
    tracker.add(entries)
    batch = TailBatch(entries=entries)
    dropped = frame.get("dropped_entries") or []
    if dropped:
        stamps = [int(d["timestamp"]) for d in dropped if d.get("timestamp")]
        batch.dropped = len(dropped)
        batch.dropped_from = min(stamps) if stamps else None
        batch.dropped_to = max(stamps) if stamps else None
    return batch


_REJECTED = re.compile(
    r"entry with timestamp (\S+ \S+) \+0000 UTC ignored, reason: '(.*)',?\s*$", re.M
)
_TOTAL = re.compile(r"total ignored: (\d+) out of (\d+)")


def _parse_go_time(text: str) -> int | None:
    """`2024-05-01 10:00:00.000000001` (UTC) as ns."""
    day, _, clock = text.partition(" ")
    whole, _, frac = clock.partition(".")
    try:
        dt = datetime.strptime(f"{day} {whole}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(dt.timestamp()) * NS + int((frac or "0").ljust(9, "0")[:9])


def _partial_failure(text: str, streams: Sequence[Stream], total: int) -> PushResult:
    """Loki's 400 push body: rejected entries (the first 10) and `total ignored: X out of Y`.
    A body of another shape (the whole request was refused) rejects every entry with it."""
    m = _TOTAL.search(text)
    if m is None:
        reason = text.strip() or "rejected by Loki (400)"
        return PushResult(
            rejected=[RejectedEntry(s.labels, e.ts, reason) for s in streams for e in s.entries]
        )
    ignored = int(m.group(1))
    by_ts: dict[int, Labels] = {}
    for s in streams:
        for e in s.entries:
            by_ts.setdefault(e.ts, s.labels)
    rejected = []
    for stamp, reason in _REJECTED.findall(text):
        ts = _parse_go_time(stamp)
        if ts is not None:
            rejected.append(RejectedEntry(by_ts.get(ts, {}), ts, reason))
    # Loki lists at most 10: the rest are counted with the last reason seen.
    while len(rejected) < ignored:
        last = rejected[-1].reason if rejected else "rejected by Loki"
        rejected.append(RejectedEntry({}, 0, last))
    return PushResult(accepted=max(0, total - ignored), rejected=rejected)
