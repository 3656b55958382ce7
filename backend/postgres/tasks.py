"""The task (run) table on PostgreSQL (asyncpg): the production TaskStore (see ports.TaskStore).

It answers every call exactly as the SQLite store (backend.embedded.tasks) does, and the shared
suite tests/test_tasks_contract.py proves it on both. To make that hold by construction, the pure
parts are the SQLite module's own: the folding of a batch into one row per run (`_fold`), the end
status aliases, the triage transition table and the page cursor format. What is written again
here is the SQL, statement for statement:

- apply_events: one transaction, one `INSERT ... ON CONFLICT DO UPDATE` per run (sent with
  executemany, in run id order so that concurrent batches lock rows in the same order), with the
  same CASE rules as the SQLite upsert (SQLite's scalar min/max are LEAST/GREATEST here; their
  arguments are never NULL).
- STALLED is derived at read time from `now - stall_after_s`; a page cursor carries the first
  page's cutoff, so pagination is stable while runs stall, exactly as on SQLite.
- Run ids sort byte-wise and the text filter folds ASCII only: the columns use COLLATE "C", the
  equivalent of SQLite's BINARY collation and ASCII-only lower(). The text filter reads a
  generated `search` column (the four searched fields, lower-cased, joined by U+0001) with LIKE,
  which a pg_trgm index serves when the extension is available (migration 002).
- Keyset pagination on (sort_ts, run_id); every list filter has an index ending in that key
  (see migrations/001_tasks.sql). No OFFSET. Failing-first is, as on SQLite, two ordered scans
  (failing, then the rest only if the page is not full), here inside one read-only snapshot.

Schema and migrations: `open()` creates a connection pool and applies the versioned SQL files of
backend/postgres/migrations/ (NNN_name.sql, in order) inside one transaction that holds
`pg_advisory_xact_lock(MIGRATION_LOCK_ID)` and records each applied version in the schema's
`agentlog_migrations` table; instances starting together wait for each other instead of racing.
A schema migrated by a newer agentlog is refused (StorageError), never written to.

Only parameterised statements are sent. The one name spliced into SQL text is the schema, checked
to be a plain identifier and double-quoted.

Live updates: after set_triage, set_status and apply_events the same transaction sends
`pg_notify('agentlog_tasks', '{"i": <instance>, "t": <tenant>, "r": [<run ids>]}')` (split into
several notifications when the ids do not fit in one payload). `subscribe()` LISTENs on its own
connection and yields the run ids that other instances changed.

Faults: a refused, unreachable, hanging or dropped server is a ServiceUnavailable naming
host:port and the setting to check (postgres.dsn / DATABASE_URL); connecting is bounded by
`connect_timeout_s` and every statement by `command_timeout_s`, so a server that accepts and
never answers cannot block a caller for longer. The pool reconnects by itself on the next call;
health() reports ok or down with the reason and since when.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import asyncpg.pool
import orjson

from ..embedded.tasks import (
    _ASCII_LOWER,  # ASCII-only folding of the text filter's needle
    TRIAGE_TRANSITIONS,
    _Cursor,
    _decode_cursor,
    _encode_cursor,
    _fold,
)
from ..errors import (
    AgentlogError,
    ConfigError,
    InvalidTransition,
    NotFound,
    ServiceUnavailable,
    StorageError,
    UsageError,
)
from ..models import (
    DEFAULT_TENANT,
    TERMINAL_STATUSES,
    AgentEvent,
    HealthState,
    RunStatus,
    SourceHealth,
    Summary,
    Task,
    TaskFilter,
    TaskPage,
    TaskSort,
    TriageState,
)

if TYPE_CHECKING:
    from ..ports import TaskStore

__all__ = [
    "MIGRATION_LOCK_ID",
    "NOTIFY_CHANNEL",
    "Migration",
    "PostgresTaskStore",
    "load_migrations",
]

T = TypeVar("T")
_Conn: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
_Rows: TypeAlias = "builtins.list[asyncpg.Record]"

NOTIFY_CHANNEL = "agentlog_tasks"
# pg_advisory_xact_lock key held while migrating: b"agentlog" read as a big-endian int64.
MIGRATION_LOCK_ID = int.from_bytes(b"agentlog", "big")
MIGRATIONS_TABLE = "agentlog_migrations"
# NOTIFY payloads must stay under 8000 bytes; leave room for the envelope.
_NOTIFY_MAX_BYTES = 7000
_SETTING = "postgres.dsn / DATABASE_URL (or postgres.host / postgres.port)"
_SEARCH_SEPARATOR = "\x01"  # joins the fields of the `search` column (migration 001)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MIGRATION_FILE = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")


# ---------------------------------------------------------------- migrations


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> builtins.list[Migration]:
    """The SQL migrations shipped in backend/postgres/migrations, oldest first. Versions are
    numbered 1, 2, 3... without gaps (a gap means a file is missing from the install)."""
    folder = resources.files(__package__ or "backend.postgres").joinpath("migrations")
    found: builtins.list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != builtins.list(range(1, len(found) + 1)):
        versions = ", ".join(str(m.version) for m in found) or "none"
        raise StorageError(
            f"the PostgreSQL migrations shipped with agentlog are incomplete (found versions "
            f"{versions}): reinstall agentlog"
        )
    return found


# ---------------------------------------------------------------- where the server is


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int | str
    database: str
    user: str

    @property
    def hostport(self) -> str:
        if self.port == "":
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def display(self) -> str:
        """host:port/database: never the password."""
        return f"{self.hostport}/{self.database}"


def _endpoint(dsn: str) -> _Endpoint:
    """host, port, database and user of a postgresql:// URL, for messages (no password)."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    user = unquote(parts.username or "") or query.get("user", [""])[0] or "postgres"
    host: str
    port: int | str
    try:
        host = parts.hostname or ""
        port = parts.port or 5432
    except ValueError:  # several hosts ("h1:5432,h2:5432"): shown as given
        host, port = parts.netloc.rpartition("@")[2], ""
    if "host" in query:
        host = query["host"][0]
    if "port" in query:
        port = query["port"][0]
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0] or user
    return _Endpoint(host or "localhost", port, database, user)


def _quote_schema(schema: str) -> str:
    if not _IDENTIFIER.fullmatch(schema) or schema.lower().startswith("pg_"):
        raise UsageError(
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits and underscores "
            "(at most 63, not starting with a digit or pg_)"
        )
    return f'"{schema}"'


# ---------------------------------------------------------------- statements


class _Args:
    """Positional parameters of one statement: `add(value, type)` returns `$n::type`."""

    def __init__(self) -> None:
        self.values: builtins.list[Any] = []

    def add(self, value: Any, pgtype: str) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{pgtype}"


def _named(sql: str, types: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """`:name` placeholders -> `$n::type`, and the names in parameter order."""
    order: builtins.list[str] = []

    def sub(match: re.Match[str]) -> str:
        name = match[1]
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}::{types[name]}"

    return re.sub(r"(?<![:\w]):([a-z_]+)", sub, sql), tuple(order)


# The SQLite upsert (backend/embedded/tasks.py), clause for clause.
_UPSERT_TYPES = {
    "tenant": "text",
    "run_id": "text",
    "agent": "text",
    "task": "text",
    "start_agent": "text",
    "start_task": "text",
    "has_start": "boolean",
    "start_ts": "bigint",
    "first_ts": "bigint",
    "last_ts": "bigint",
    "end_ts": "bigint",
    "end_status": "text",
    "steps": "bigint",
    "errors": "bigint",
    "last_error": "text",
    "last_error_at": "bigint",
    "model": "text",
    "model_at": "bigint",
    "input_tokens": "bigint",
    "output_tokens": "bigint",
    "cost": "double precision",
}
_UPSERT = """
INSERT INTO {tasks} AS tasks (
    tenant, run_id, agent, task, status, started_at, ended_at, last_seen, step_count,
    error_count, last_error, last_error_at, model, model_at, input_tokens, output_tokens,
    cost_usd, has_start
) VALUES (
    :tenant, :run_id, :agent, :task,
    CASE WHEN :end_ts IS NULL THEN 'running'
         ELSE COALESCE(:end_status, CASE WHEN :errors > 0 THEN 'failed' ELSE 'succeeded' END) END,
    CASE WHEN :has_start THEN :start_ts ELSE :first_ts END,
    :end_ts, :last_ts, :steps, :errors, :last_error, :last_error_at, :model, :model_at,
    :input_tokens, :output_tokens, :cost, :has_start
)
ON CONFLICT (tenant, run_id) DO UPDATE SET
    agent = CASE WHEN :has_start AND NOT tasks.has_start AND :start_agent <> '' THEN :start_agent
                 WHEN tasks.agent = '' THEN excluded.agent ELSE tasks.agent END,
    task = CASE WHEN :has_start AND NOT tasks.has_start AND :start_task <> '' THEN :start_task
                WHEN tasks.task = '' THEN excluded.task ELSE tasks.task END,
    started_at = CASE
        WHEN :has_start AND tasks.has_start
        THEN LEAST(COALESCE(tasks.started_at, :start_ts), :start_ts)
        WHEN :has_start THEN :start_ts
        WHEN tasks.has_start THEN tasks.started_at
        ELSE LEAST(COALESCE(tasks.started_at, :first_ts), :first_ts) END,
    has_start = tasks.has_start OR :has_start,
    status = CASE
        WHEN :end_ts IS NOT NULL AND (tasks.ended_at IS NULL OR :end_ts >= tasks.ended_at)
        THEN COALESCE(:end_status,
                      CASE WHEN tasks.error_count + :errors > 0 THEN 'failed' ELSE 'succeeded' END)
        ELSE tasks.status END,
    ended_at = CASE
        WHEN :end_ts IS NOT NULL AND (tasks.ended_at IS NULL OR :end_ts >= tasks.ended_at)
        THEN :end_ts ELSE tasks.ended_at END,
    last_seen = GREATEST(COALESCE(tasks.last_seen, :last_ts), :last_ts),
    step_count = tasks.step_count + :steps,
    error_count = tasks.error_count + :errors,
    last_error = CASE
        WHEN :last_error_at IS NOT NULL
             AND (tasks.last_error_at IS NULL OR :last_error_at >= tasks.last_error_at)
        THEN :last_error ELSE tasks.last_error END,
    last_error_at = CASE
        WHEN :last_error_at IS NOT NULL
             AND (tasks.last_error_at IS NULL OR :last_error_at >= tasks.last_error_at)
        THEN :last_error_at ELSE tasks.last_error_at END,
    model = CASE
        WHEN :model_at IS NOT NULL AND (tasks.model_at IS NULL OR :model_at >= tasks.model_at)
        THEN :model ELSE tasks.model END,
    model_at = CASE
        WHEN :model_at IS NOT NULL AND (tasks.model_at IS NULL OR :model_at >= tasks.model_at)
        THEN :model_at ELSE tasks.model_at END,
    input_tokens = tasks.input_tokens + :input_tokens,
    output_tokens = tasks.output_tokens + :output_tokens,
    cost_usd = tasks.cost_usd + :cost
"""

_TASK_COLUMNS = (
    "run_id, agent, task, status, started_at, ended_at, last_seen, step_count, error_count, "
    "last_error, model, input_tokens, output_tokens, cost_usd, triage, triage_by, triage_note, "
    "triage_at, tenant, sort_ts"
)


def _status_expr(cutoff: str) -> str:
    return f"CASE WHEN status = 'running' AND last_seen < {cutoff} THEN 'stalled' ELSE status END"


def _failing_expr(cutoff: str) -> str:
    return f"(status IN ('failed', 'timeout') OR (status = 'running' AND last_seen < {cutoff}))"


def _in(column: str, values: Sequence[str], args: _Args) -> str:
    # One value as `=`: the planner then sees an ordered index prefix (tenant, column, sort key).
    if len(values) == 1:
        return f"{column} = {args.add(values[0], 'text')}"
    return f"{column} = ANY({args.add(builtins.list(values), 'text[]')})"


def _where(flt: TaskFilter, args: _Args, cutoff: str) -> str:
    """The WHERE clause (without the keyset part) for a filter: the SQLite store's, in SQL."""
    clauses = [f"tenant = {args.add(flt.tenant, 'text')}"]
    if flt.statuses:
        parts = []
        stored = sorted(
            {RunStatus(s).value for s in flt.statuses} - {RunStatus.RUNNING, RunStatus.STALLED}
        )
        if stored:
            parts.append(_in("status", stored, args))
        if RunStatus.RUNNING in flt.statuses and RunStatus.STALLED in flt.statuses:
            parts.append("status = 'running'")
        elif RunStatus.RUNNING in flt.statuses:
            parts.append(f"(status = 'running' AND (last_seen IS NULL OR last_seen >= {cutoff}))")
        elif RunStatus.STALLED in flt.statuses:
            parts.append(f"(status = 'running' AND last_seen < {cutoff})")
        clauses.append("(" + " OR ".join(parts) + ")")
    if flt.agents:
        clauses.append(_in("agent", flt.agents, args))
    if flt.triage:
        clauses.append(_in("triage", [TriageState(t).value for t in flt.triage], args))
    if flt.run_ids:
        clauses.append(_in("run_id", flt.run_ids, args))
    if flt.since_ns is not None:
        clauses.append(f"sort_ts >= {args.add(flt.since_ns, 'bigint')}")
    if flt.until_ns is not None:
        clauses.append(f"sort_ts < {args.add(flt.until_ns, 'bigint')}")
    if flt.text:
        needle = flt.text.translate(_ASCII_LOWER)
        if _SEARCH_SEPARATOR in needle:
            # lower() of a COLLATE "C" column folds ASCII only, like SQLite's lower().
            ref = args.add(needle, "text")
            clauses.append(
                f"(strpos(lower(task), {ref}) > 0 OR strpos(lower(run_id), {ref}) > 0"
                f" OR strpos(lower(last_error), {ref}) > 0 OR strpos(lower(agent), {ref}) > 0)"
            )
        else:
            # The same test on the `search` column (the four fields lower-cased and joined by
            # U+0001): a needle without U+0001 is in the joined text exactly when it is in one
            # of the fields. LIKE, so the trigram index (migration 002) can serve it.
            escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(f"search LIKE {args.add('%' + escaped + '%', 'text')}")
    return " AND ".join(clauses)


def _row_to_task(row: asyncpg.Record) -> Task:
    return Task(
        run_id=row["run_id"],
        agent=row["agent"],
        task=row["task"],
        status=RunStatus(row["dstatus"]),
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        last_seen=row["last_seen"],
        step_count=row["step_count"],
        error_count=row["error_count"],
        last_error=row["last_error"],
        model=row["model"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cost_usd=row["cost_usd"],
        triage=TriageState(row["triage"]),
        triage_by=row["triage_by"],
        triage_note=row["triage_note"],
        triage_at=row["triage_at"],
        tenant=row["tenant"],
    )


def _notify_payloads(instance: str, tenant: str, run_ids: Sequence[str]) -> builtins.list[str]:
    """NOTIFY payloads naming `run_ids`, each under the size limit. A run id too long to fit
    alone is sent as `"r": null` ("something changed: refresh")."""
    out: builtins.list[str] = []
    head = orjson.dumps({"i": instance, "t": tenant, "r": None})
    budget = _NOTIFY_MAX_BYTES - len(head)
    if budget < 0:  # a tenant name of kilobytes: not announced (a write never fails for this)
        return out
    chunk: builtins.list[str] = []
    size = 0
    overflow = False
    for run_id in run_ids:
        n = len(orjson.dumps(run_id)) + 1
        if n > budget:
            overflow = True
            continue
        if size + n > budget:
            out.append(orjson.dumps({"i": instance, "t": tenant, "r": chunk}).decode())
            chunk, size = [], 0
        chunk.append(run_id)
        size += n
    if chunk:
        out.append(orjson.dumps({"i": instance, "t": tenant, "r": chunk}).decode())
    if overflow:
        out.append(orjson.dumps({"i": instance, "t": tenant, "r": None}).decode())
    return out


class _Lost:
    """Queue marker: the listening connection `conn` is gone."""

    __slots__ = ("conn",)

    def __init__(self, conn: object) -> None:
        self.conn = conn


class _Closed:
    """Queue marker: the store was closed."""


_CLOSED = _Closed()
_QueueItem = builtins.list[str] | None | _Lost | _Closed


# ---------------------------------------------------------------- the store


class PostgresTaskStore:
    """ports.TaskStore on PostgreSQL. `await store.open()` creates the pool and migrates the
    schema (idempotent; the first call of any other method does it too, so a store whose server
    was down at start recovers by itself); `await store.close()` at the end.

    `schema` is where the tables live (created if missing). `connect_timeout_s` bounds opening a
    connection (and waiting for a free one); `command_timeout_s` bounds every statement.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        pool_min: int = 1,
        pool_max: int = 10,
        stall_after_s: float = 600.0,
        clock: Callable[[], int] = time.time_ns,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 10.0,
        listen_keepalive_s: float = 15.0,
    ) -> None:
        if pool_min < 0 or pool_max < 1 or pool_min > pool_max:
            raise UsageError(
                f"postgres.pool_min ({pool_min}) and postgres.pool_max ({pool_max}) must satisfy "
                "0 <= pool_min <= pool_max and pool_max >= 1"
            )
        self.dsn = dsn
        self.schema = schema
        self._q = _quote_schema(schema)
        self.endpoint = _endpoint(dsn)
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.stall_after_ns = int(stall_after_s * 1e9)
        self._clock = clock
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.listen_keepalive_s = listen_keepalive_s
        self.instance_id = secrets.token_hex(4)
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._listeners: set[asyncpg.Connection[asyncpg.Record]] = set()
        self._queues: set[asyncio.Queue[_QueueItem]] = set()
        self._state = HealthState.OK
        self._reason = ""
        self._since = 0
        tasks = f"{self._q}.tasks"
        self._tasks = tasks
        self._upsert, self._upsert_names = _named(_UPSERT.format(tasks=tasks), _UPSERT_TYPES)

    @property
    def detail(self) -> str:
        """Where the store is, for health and messages: host:port/db (no password)."""
        return self.endpoint.display

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the pool and apply pending migrations (under the advisory lock)."""
        await self._ensure_pool()

    async def close(self) -> None:
        """Stop subscribers and close the pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for queue in builtins.list(self._queues):
            queue.put_nowait(_CLOSED)
        for conn in builtins.list(self._listeners):
            conn.terminate()
        self._listeners.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self.command_timeout_s)
            except Exception:  # a hung or gone server: drop the connections without goodbye
                pool.terminate()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"PostgreSQL task store at {self.detail} is closed")

    async def _ensure_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        self._check_open()
        if self._pool is not None:
            return self._pool
        async with self._open_lock:
            self._check_open()
            if self._pool is not None:
                return self._pool
            try:
                pool = await asyncio.wait_for(
                    asyncpg.create_pool(
                        self.dsn,
                        min_size=self.pool_min,
                        max_size=self.pool_max,
                        timeout=self.connect_timeout_s,
                        command_timeout=self.command_timeout_s,
                        server_settings={"application_name": f"agentlog-{self.instance_id}"},
                    ),
                    # a bound even if a connect attempt ignored its own timeout
                    timeout=self.connect_timeout_s * max(1, self.pool_min) + 1,
                )
            except Exception as exc:
                self._raise(exc, connecting=True)
            try:
                async with pool.acquire(timeout=self.connect_timeout_s) as conn:
                    await self._migrate(conn)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, Exception):
                    self._raise(exc)
                raise
            self._pool = pool
            self._mark_ok()
            return pool

    async def _migrate(self, conn: _Conn) -> None:
        migrations = load_migrations()
        q = self._q
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", MIGRATION_LOCK_ID)
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1::text", self.schema
            )
            if not exists:
                await conn.execute(f"CREATE SCHEMA {q}")
            await conn.execute(f"SET LOCAL search_path TO {q}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {q}.{MIGRATIONS_TABLE} ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {
                r["version"]
                for r in await conn.fetch(f"SELECT version FROM {q}.{MIGRATIONS_TABLE}")
            }
            known = {m.version for m in migrations}
            if applied - known:
                raise StorageError(
                    f"PostgreSQL schema {self.schema!r} at {self.detail} was migrated by a newer "
                    f"agentlog (task schema version {max(applied)}, this one knows up to "
                    f"{max(known)}): upgrade agentlog"
                )
            for m in migrations:
                if m.version in applied:
                    continue
                await conn.execute(m.sql)
                await conn.execute(
                    f"INSERT INTO {q}.{MIGRATIONS_TABLE} (version, name)"
                    " VALUES ($1::integer, $2::text)",
                    m.version,
                    m.name,
                )

    def _cutoff(self) -> int:
        return self._clock() - self.stall_after_ns

    # ------------------------------------------------------------ errors and health

    def _service_error(
        self, exc: BaseException, *, connecting: bool = False
    ) -> AgentlogError | None:
        """`exc` in plain words when it means the server is unreachable or not answering; None
        for anything else (a bug, or an error the caller must see as it is)."""
        where = f"PostgreSQL at {self.endpoint.hostport}"
        if isinstance(exc, AgentlogError):
            return exc
        if isinstance(exc, TimeoutError):
            if connecting:
                return ServiceUnavailable(
                    f"{where} did not answer within {self.connect_timeout_s:g} s while connecting "
                    f"(the server hangs, a firewall drops packets, or all {self.pool_max} pooled "
                    f"connections are busy); check that it is up and reachable, and {_SETTING}"
                )
            return ServiceUnavailable(
                f"{where} did not answer a query within {self.command_timeout_s:g} s (the server "
                f"hangs or is overloaded); check that it is healthy, and {_SETTING}"
            )
        if isinstance(exc, ConnectionRefusedError):
            return ServiceUnavailable(
                f"{where} refused the connection: no server is listening there; start "
                f"PostgreSQL or fix {_SETTING}"
            )
        if isinstance(exc, socket.gaierror):
            return ServiceUnavailable(
                f"cannot resolve the PostgreSQL host {self.endpoint.host!r} ({exc.strerror}); "
                f"fix {_SETTING}"
            )
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            return ServiceUnavailable(
                f"{where} rejected user {self.endpoint.user!r} ({exc}); check the user and "
                "password in postgres.dsn / DATABASE_URL (or postgres.user / postgres.password)"
            )
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return ServiceUnavailable(
                f"{where} has no database {self.endpoint.database!r}; create it, or fix the "
                "database in postgres.dsn / DATABASE_URL (or postgres.database)"
            )
        if isinstance(exc, asyncpg.TooManyConnectionsError):
            return ServiceUnavailable(
                f"{where} has no connection slot left ({exc}); lower postgres.pool_max or raise "
                "the server's max_connections"
            )
        if connecting and isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
            return ConfigError(
                f"postgres.dsn / DATABASE_URL is not a usable PostgreSQL URL ({exc}); expected "
                "postgresql://user:password@host:5432/database"
            )
        if isinstance(exc, asyncpg.CannotConnectNowError):
            return ServiceUnavailable(
                f"{where} is starting up or shutting down ({exc}); retry soon"
            )
        lost = isinstance(
            exc,
            asyncpg.PostgresConnectionError | asyncpg.OperatorInterventionError | OSError,
        ) or (
            isinstance(exc, asyncpg.InterfaceError)
            and ("closed" in str(exc) or "closing" in str(exc))
        )
        if lost:
            verb = "could not connect to" if connecting else "lost the connection to"
            return ServiceUnavailable(
                f"{verb} {where} ({exc or type(exc).__name__}); it is retried on the next call; "
                f"check that the server is up, and {_SETTING}"
            )
        return None

    def _raise(self, exc: Exception, *, connecting: bool = False) -> NoReturn:
        """Re-raise `exc`, in plain words when it is a service failure (health goes down)."""
        err = self._service_error(exc, connecting=connecting)
        if err is None:
            raise exc
        self._mark_down(str(err))
        if err is exc:
            raise exc
        raise err from exc

    def _mark_down(self, reason: str) -> None:
        if self._state is not HealthState.DOWN:
            self._state, self._since = HealthState.DOWN, self._clock()
        self._reason = reason

    def _mark_ok(self) -> None:
        if self._state is not HealthState.OK or not self._since:
            self._state, self._since = HealthState.OK, self._clock()
        self._reason = ""

    async def _run(self, fn: Callable[[_Conn], Awaitable[T]]) -> T:
        """Run `fn` on a pooled connection, service failures turned into ServiceUnavailable."""
        pool = await self._ensure_pool()
        try:
            conn = await pool.acquire(timeout=self.connect_timeout_s)
        except Exception as exc:
            self._raise(exc, connecting=True)
        try:
            result = await fn(conn)
        except Exception as exc:
            err = self._service_error(exc)
            if isinstance(err, ServiceUnavailable):
                # never hand a hung or broken connection back to the pool (a connection that
                # closed has already left it: terminate() then refuses, harmlessly)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            if err is None or err is exc:
                raise
            self._mark_down(str(err))
            raise err from exc
        finally:
            with contextlib.suppress(Exception):
                await pool.release(conn, timeout=self.command_timeout_s)
        self._mark_ok()
        return result

    async def health(self) -> SourceHealth:
        started = time.perf_counter()

        async def ping(conn: _Conn) -> None:
            await conn.fetchval("SELECT 1")

        try:
            await self._run(ping)
        except AgentlogError as exc:
            if isinstance(exc, StorageError) and self._closed:
                reason = str(exc)
            else:
                self._mark_down(str(exc))
                reason = self._reason
            return SourceHealth(
                name="tasks",
                kind="postgres",
                state=HealthState.DOWN,
                detail=self.detail,
                reason=reason,
                since=self._since or self._clock(),
            )
        return SourceHealth(
            name="tasks",
            kind="postgres",
            detail=self.detail,
            since=self._since,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    # ------------------------------------------------------------ writes

    async def _notify(self, conn: _Conn, tenant: str, run_ids: Sequence[str]) -> None:
        for payload in _notify_payloads(self.instance_id, tenant, run_ids):
            await conn.execute("SELECT pg_notify($1::text, $2::text)", NOTIFY_CHANNEL, payload)

    async def apply_events(self, events: Sequence[AgentEvent], tenant: str = DEFAULT_TENANT) -> int:
        """Fold a batch into run records in one transaction, one upsert per run."""
        await self._ensure_pool()
        if not events:
            return 0
        by_run: dict[str, builtins.list[AgentEvent]] = {}
        for ev in events:
            if ev.run_id:
                by_run.setdefault(ev.run_id, []).append(ev)
        if not by_run:
            return 0
        run_ids = sorted(by_run)  # one lock order for every batch: no deadlock between writers
        names = self._upsert_names
        rows = []
        for run_id in run_ids:
            params = _fold(run_id, by_run[run_id], tenant)
            params["has_start"] = bool(params["has_start"])
            rows.append(tuple(params[n] for n in names))

        async def upsert(conn: _Conn) -> None:
            async with conn.transaction():
                await conn.executemany(self._upsert, rows)
                await self._notify(conn, tenant, run_ids)

        await self._run(upsert)
        return len(rows)

    async def _fetch_task(
        self, conn: _Conn, tenant: str, run_id: str, cutoff: int, *, lock: bool = False
    ) -> Task | None:
        row = await conn.fetchrow(
            f"SELECT {_TASK_COLUMNS}, {_status_expr('$3::bigint')} AS dstatus FROM {self._tasks}"
            " WHERE tenant = $1::text AND run_id = $2::text" + (" FOR UPDATE" if lock else ""),
            tenant,
            run_id,
            cutoff,
        )
        return None if row is None else _row_to_task(row)

    async def set_triage(
        self,
        run_id: str,
        state: TriageState,
        *,
        by: str,
        note: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Task:
        await self._ensure_pool()
        try:
            target = TriageState(state)
        except ValueError:
            names = ", ".join(s.value for s in TriageState)
            raise UsageError(f"unknown triage state {state!r}: expected one of {names}") from None
        now = self._clock()
        cutoff = now - self.stall_after_ns

        async def change(conn: _Conn) -> Task:
            async with conn.transaction():
                task = await self._fetch_task(conn, tenant, run_id, cutoff, lock=True)
                if task is None:
                    raise NotFound(f"no run {run_id!r} (tenant {tenant!r})")
                if task.triage == target:
                    return task
                if target not in TRIAGE_TRANSITIONS[task.triage]:
                    raise InvalidTransition(
                        f"cannot change triage of run {run_id!r} from {task.triage.value} to "
                        f"{target.value}"
                    )
                await conn.execute(
                    f"UPDATE {self._tasks} SET triage = $1::text, triage_by = $2::text,"
                    " triage_note = $3::text, triage_at = $4::bigint"
                    " WHERE tenant = $5::text AND run_id = $6::text",
                    target.value,
                    by,
                    note,
                    now,
                    tenant,
                    run_id,
                )
                await self._notify(conn, tenant, [run_id])
            task.triage, task.triage_by, task.triage_note, task.triage_at = target, by, note, now
            return task

        return await self._run(change)

    async def set_status(
        self, run_id: str, status: str, *, at_ns: int | None = None, tenant: str = DEFAULT_TENANT
    ) -> Task:
        """End a running (or stalled) run by hand. Only terminal statuses; setting an ended run to
        its own status again is a no-op; any other change is an InvalidTransition."""
        await self._ensure_pool()
        try:
            target = RunStatus(status.strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in RunStatus)
            raise UsageError(f"unknown run status {status!r}: expected one of {names}") from None
        now = self._clock()
        ended_at = now if at_ns is None else at_ns
        cutoff = now - self.stall_after_ns

        async def change(conn: _Conn) -> Task:
            async with conn.transaction():
                task = await self._fetch_task(conn, tenant, run_id, cutoff, lock=True)
                if task is None:
                    raise NotFound(f"no run {run_id!r} (tenant {tenant!r})")
                current = task.status
                if current == target and current in TERMINAL_STATUSES:
                    return task
                running = current in (RunStatus.RUNNING, RunStatus.STALLED)
                if not running or target not in TERMINAL_STATUSES:
                    raise InvalidTransition(
                        f"cannot change status of run {run_id!r} from {current.value} to "
                        f"{target.value}: only a running or stalled run can be ended, and only "
                        "with succeeded, failed, cancelled or timeout"
                    )
                await conn.execute(
                    f"UPDATE {self._tasks} SET status = $1::text, ended_at = $2::bigint"
                    " WHERE tenant = $3::text AND run_id = $4::text",
                    target.value,
                    ended_at,
                    tenant,
                    run_id,
                )
                await self._notify(conn, tenant, [run_id])
            task.status, task.ended_at = target, ended_at
            return task

        return await self._run(change)

    async def save_summary(self, summary: Summary, tenant: str = DEFAULT_TENANT) -> None:
        await self._ensure_pool()
        created = summary.created_at or self._clock()

        async def save(conn: _Conn) -> None:
            await conn.execute(
                f"INSERT INTO {self._q}.summaries (tenant, run_id, input_hash, model, text,"
                " offline, input_tokens, output_tokens, cost_usd, created_at, error)"
                " VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::boolean,"
                " $7::bigint, $8::bigint, $9::double precision, $10::bigint, $11::text)"
                " ON CONFLICT (tenant, run_id, input_hash, model) DO UPDATE SET"
                " text = excluded.text, offline = excluded.offline,"
                " input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,"
                " cost_usd = excluded.cost_usd, created_at = excluded.created_at,"
                " error = excluded.error",
                tenant,
                summary.run_id,
                summary.input_hash,
                summary.model,
                summary.text,
                summary.offline,
                summary.input_tokens,
                summary.output_tokens,
                summary.cost_usd,
                created,
                summary.error,
            )

        await self._run(save)

    # ------------------------------------------------------------ reads

    async def get(self, run_id: str, tenant: str = DEFAULT_TENANT) -> Task | None:
        cutoff = self._cutoff()

        async def fetch(conn: _Conn) -> Task | None:
            return await self._fetch_task(conn, tenant, run_id, cutoff)

        return await self._run(fetch)

    async def get_summary(
        self, run_id: str, input_hash: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> Summary | None:
        """The newest summary of a run, or of a run and log hash (any model)."""
        args = _Args()
        sql = (
            "SELECT run_id, text, model, offline, input_hash, input_tokens, output_tokens,"
            f" cost_usd, created_at, error FROM {self._q}.summaries"
            f" WHERE tenant = {args.add(tenant, 'text')} AND run_id = {args.add(run_id, 'text')}"
        )
        if input_hash is not None:
            sql += f" AND input_hash = {args.add(input_hash, 'text')}"
        sql += " ORDER BY created_at DESC, input_hash DESC, model DESC LIMIT 1"

        async def fetch(conn: _Conn) -> Summary | None:
            row = await conn.fetchrow(sql, *args.values)
            if row is None:
                return None
            return Summary(
                run_id=row["run_id"],
                text=row["text"],
                model=row["model"],
                offline=row["offline"],
                input_hash=row["input_hash"],
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                cost_usd=row["cost_usd"],
                created_at=row["created_at"],
                error=row["error"],
            )

        return await self._run(fetch)

    async def counts(self, flt: TaskFilter) -> dict[str, int]:
        """Runs by status (stalled derived) among those matching the whole filter; every status
        is present, with 0 when none match."""
        args = _Args()
        cutoff = args.add(self._cutoff(), "bigint")
        where = _where(flt, args, cutoff)
        sql = (
            f"SELECT {_status_expr(cutoff)} AS s, count(*) AS n FROM {self._tasks}"
            f" WHERE {where} GROUP BY 1"
        )

        async def fetch(conn: _Conn) -> dict[str, int]:
            result = {s.value: 0 for s in RunStatus}
            for row in await conn.fetch(sql, *args.values):
                result[row["s"]] = row["n"]
            return result

        return await self._run(fetch)

    async def list(
        self,
        flt: TaskFilter,
        *,
        sort: TaskSort = TaskSort.FAILING_FIRST,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """A page of runs. Keyset pagination: pass `next_cursor` back for the next page; runs
        added meanwhile never shift or repeat the ones already visited."""
        await self._ensure_pool()
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        sort = TaskSort(sort)
        cur = _decode_cursor(cursor, sort) if cursor else None
        cutoff_value = cur.cutoff if cur else self._cutoff()
        desc = sort is not TaskSort.OLDEST
        order = "sort_ts DESC, run_id DESC" if desc else "sort_ts, run_id"

        def statement(group: int, failing: bool | None, n: int) -> tuple[str, builtins.list[Any]]:
            """One ordered scan: group `group` (failing, not failing, or any when None), from
            the cursor when it points into this group, at most `n` rows."""
            args = _Args()
            cutoff = args.add(cutoff_value, "bigint")
            sql = (
                f"SELECT {group} AS grp, {_TASK_COLUMNS}, {_status_expr(cutoff)} AS dstatus"
                f" FROM {self._tasks} WHERE {_where(flt, args, cutoff)}"
            )
            if failing is not None:
                sql += f" AND {'' if failing else 'NOT '}{_failing_expr(cutoff)}"
            if cur is not None and cur.group == group:
                cts, crid = args.add(cur.ts, "bigint"), args.add(cur.run_id, "text")
                sql += f" AND (sort_ts, run_id) {'<' if desc else '>'} ({cts}, {crid})"
            return f"{sql} ORDER BY {order} LIMIT {int(n)}", args.values

        want = int(limit) + 1

        async def fetch(conn: _Conn) -> _Rows:
            async def scan(
                group: int, failing: bool | None, n: int
            ) -> builtins.list[asyncpg.Record]:
                sql, values = statement(group, failing, n)
                return await conn.fetch(sql, *values)

            if sort is not TaskSort.FAILING_FIRST:
                return await scan(0, None, want)
            if cur is not None and cur.group == 1:  # the failing group is done
                return await scan(1, False, want)
            # Failing-first, as on SQLite: the failing group newest first, then (only when the
            # page is not full yet) the rest. Two ordered scans that each stop early, seeing one
            # snapshot, so a run that changes group in between is not shown twice.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rows = await scan(0, True, want)
                if len(rows) < want:
                    rows += await scan(1, False, want - len(rows))
            return rows

        rows = await self._run(fetch)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = _encode_cursor(
                _Cursor(sort.value, cutoff_value, last["grp"], last["sort_ts"], last["run_id"])
            )
        return TaskPage(tasks=[_row_to_task(row) for row in rows], next_cursor=next_cursor)

    # ------------------------------------------------------------ live updates

    async def subscribe(self, tenant: str = DEFAULT_TENANT) -> AsyncIterator[builtins.list[str]]:
        """Run ids of `tenant` changed by OTHER instances (set_triage, set_status, apply_events),
        in batches, as they commit.

        An empty list means "resync": it is yielded first, once listening (so a caller knows
        from when on it misses nothing), and again after the listening connection was lost and
        re-established (changes made meanwhile were missed: reload what is shown). Listens on
        its own connection, outside the pool; reconnects with backoff; a keepalive query every
        `listen_keepalive_s` detects a server that went silent. Ends when the store is closed.
        """
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        self._queues.add(queue)
        delay = 0.1
        try:
            while not self._closed:
                try:
                    conn = await self._listen(queue, tenant)
                except ServiceUnavailable:  # health says why; retry with backoff
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                delay = 0.1
                try:
                    yield []
                    while True:
                        item = await self._next_item(conn, queue)
                        if isinstance(item, _Closed):
                            return
                        if isinstance(item, _Lost):
                            if item.conn is conn:
                                break
                            continue  # an earlier connection's news
                        batch = self._drain(item, queue)
                        if isinstance(batch, _Closed):
                            return
                        yield batch
                finally:
                    self._listeners.discard(conn)
                    conn.terminate()
        finally:
            self._queues.discard(queue)

    async def _listen(
        self, queue: asyncio.Queue[_QueueItem], tenant: str
    ) -> asyncpg.Connection[asyncpg.Record]:
        try:
            conn: asyncpg.Connection[asyncpg.Record] = await asyncio.wait_for(
                asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout_s,
                    command_timeout=self.command_timeout_s,
                    server_settings={"application_name": f"agentlog-listen-{self.instance_id}"},
                ),
                timeout=self.connect_timeout_s + 1,
            )
        except Exception as exc:
            self._raise(exc, connecting=True)
        me = self.instance_id

        def on_note(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            try:
                note = orjson.loads(str(payload))
                if note["t"] != tenant or note["i"] == me:
                    return
                ids = note["r"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return
            if ids is None or (
                isinstance(ids, builtins.list) and all(isinstance(i, str) for i in ids)
            ):
                queue.put_nowait(ids)

        def on_lost(_conn: object) -> None:
            queue.put_nowait(_Lost(conn))

        conn.add_termination_listener(on_lost)
        try:
            await conn.add_listener(NOTIFY_CHANNEL, on_note)
        except Exception as exc:
            conn.terminate()
            self._raise(exc, connecting=True)
        self._listeners.add(conn)
        return conn

    async def _next_item(
        self, conn: asyncpg.Connection[asyncpg.Record], queue: asyncio.Queue[_QueueItem]
    ) -> _QueueItem:
        while True:
            try:
                return await asyncio.wait_for(queue.get(), timeout=self.listen_keepalive_s)
            except TimeoutError:
                try:
                    await conn.fetchval("SELECT 1", timeout=self.command_timeout_s)
                except Exception:
                    return _Lost(conn)

    @staticmethod
    def _drain(
        first: builtins.list[str] | None, queue: asyncio.Queue[_QueueItem]
    ) -> builtins.list[str] | _Closed:
        """`first` plus whatever else is queued, as one de-duplicated batch ([] = resync)."""
        items: builtins.list[builtins.list[str] | None] = [first]
        lost: builtins.list[_Lost] = []
        while not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, _Closed):
                return item
            if isinstance(item, _Lost):
                lost.append(item)
                continue
            items.append(item)
        for item in lost:
            queue.put_nowait(item)  # handled after this batch is yielded
        if any(item is None for item in items):
            return []
        return builtins.list(dict.fromkeys(i for item in items if item for i in item))


if TYPE_CHECKING:  # mypy checks that the store implements the port

    def _implements_port(store: PostgresTaskStore) -> TaskStore:
        return store
