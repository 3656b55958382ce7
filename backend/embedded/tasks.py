"""The task (run) table on SQLite: the embedded TaskStore (see ports.TaskStore).

Folding rules (apply_events), decided here where DESIGN.md is silent:
- A new run starts as status running, triage new.
- run.start sets started_at (the earliest run.start wins) and agent/task (from the first run.start
  folded); without a run.start, started_at is the earliest event seen. A run.start never touches the
  status, so a late run.start cannot reopen an ended run.
- step, tool.call and llm.call each add one step; llm.call adds tokens and cost. The model is that
  of the newest run.start / llm.call naming one (by event time, across batches).
- error adds one error; last_error ("Type: message", at most 500 chars) follows the newest error
  by event time, so a late old error does not hide a newer one.
- run.end sets status and ended_at; of several run.ends the newest wins. Status aliases are
  accepted (success/ok/completed/done, error/failure, canceled/aborted, timed_out and
  deadline_exceeded); a missing or unknown status means failed when the run has errors, else
  succeeded.
- Every event moves last_seen forward (max). A run that errored and never ended stays running
  (and shows as stalled once silent for `stall_after_s`).

STALLED is never stored: a run is stalled when its status is running and last_seen is older than
now - stall_after_s. Filters, counts and the failing-first sort derive it in SQL. A page cursor
carries the "now" of the first page, so a run that stalls mid-pagination neither moves between
groups nor is visited twice.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import InvalidTransition, NotFound, StorageError, UsageError
from ..models import (
    DEFAULT_TENANT,
    TERMINAL_STATUSES,
    AgentEvent,
    EventKind,
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
from .sqlite_exec import SqliteExecutor

__all__ = ["SCHEMA_VERSION", "TRIAGE_TRANSITIONS", "SqliteTaskStore", "normalize_end_status"]

SCHEMA_VERSION = 1
LAST_ERROR_MAX = 500

# One statement per item: they run inside open()'s transaction (executescript would commit).
_SCHEMA: tuple[str, ...] = (
    """
CREATE TABLE IF NOT EXISTS tasks (
    tenant        TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    agent         TEXT    NOT NULL DEFAULT '',
    task          TEXT    NOT NULL DEFAULT '',
    status        TEXT    NOT NULL DEFAULT 'running',
    started_at    INTEGER,
    ended_at      INTEGER,
    last_seen     INTEGER,
    step_count    INTEGER NOT NULL DEFAULT 0,
    error_count   INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT    NOT NULL DEFAULT '',
    last_error_at INTEGER,
    model         TEXT    NOT NULL DEFAULT '',
    model_at      INTEGER,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL    NOT NULL DEFAULT 0,
    triage        TEXT    NOT NULL DEFAULT 'new',
    triage_by     TEXT    NOT NULL DEFAULT '',
    triage_note   TEXT    NOT NULL DEFAULT '',
    triage_at     INTEGER,
    has_start     INTEGER NOT NULL DEFAULT 0,
    -- what lists sort and since/until filter on: rows inserted by hand may lack started_at
    sort_ts       INTEGER GENERATED ALWAYS AS (COALESCE(started_at, last_seen, 0)) VIRTUAL,
    PRIMARY KEY (tenant, run_id)
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS tasks_by_time   ON tasks (tenant, sort_ts, run_id)",
    "CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (tenant, status, sort_ts, run_id)",
    "CREATE INDEX IF NOT EXISTS tasks_by_agent  ON tasks (tenant, agent, sort_ts, run_id)",
    "CREATE INDEX IF NOT EXISTS tasks_by_triage ON tasks (tenant, triage, sort_ts, run_id)",
    "CREATE INDEX IF NOT EXISTS tasks_running_seen ON tasks (tenant, last_seen)"
    " WHERE status = 'running'",
    """
CREATE TABLE IF NOT EXISTS summaries (
    tenant        TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    input_hash    TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    text          TEXT    NOT NULL,
    offline       INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL    NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    error         TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, run_id, input_hash, model)
) WITHOUT ROWID
""",
    "CREATE INDEX IF NOT EXISTS summaries_newest ON summaries (tenant, run_id, created_at)",
)

_TASK_COLUMNS = (
    "run_id, agent, task, status, started_at, ended_at, last_seen, step_count, error_count, "
    "last_error, model, input_tokens, output_tokens, cost_usd, triage, triage_by, triage_note, "
    "triage_at, tenant, sort_ts"
)

# The derived status: stalled is running and silent since before the cutoff (:cutoff).
_STATUS_EXPR = "CASE WHEN status = 'running' AND last_seen < :cutoff THEN 'stalled' ELSE status END"
_FAILING_EXPR = "(status IN ('failed', 'timeout') OR (status = 'running' AND last_seen < :cutoff))"

_UPSERT = """
INSERT INTO tasks (
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
    agent = CASE WHEN :has_start AND NOT tasks.has_start AND :start_agent != '' THEN :start_agent
                 WHEN tasks.agent = '' THEN excluded.agent ELSE tasks.agent END,
    task = CASE WHEN :has_start AND NOT tasks.has_start AND :start_task != '' THEN :start_task
                WHEN tasks.task = '' THEN excluded.task ELSE tasks.task END,
    started_at = CASE
        WHEN :has_start AND tasks.has_start
        THEN min(COALESCE(tasks.started_at, :start_ts), :start_ts)
        WHEN :has_start THEN :start_ts
        WHEN tasks.has_start THEN tasks.started_at
        ELSE min(COALESCE(tasks.started_at, :first_ts), :first_ts) END,
    has_start = max(tasks.has_start, :has_start),
    status = CASE
        WHEN :end_ts IS NOT NULL AND (tasks.ended_at IS NULL OR :end_ts >= tasks.ended_at)
        THEN COALESCE(:end_status,
                      CASE WHEN tasks.error_count + :errors > 0 THEN 'failed' ELSE 'succeeded' END)
        ELSE tasks.status END,
    ended_at = CASE
        WHEN :end_ts IS NOT NULL AND (tasks.ended_at IS NULL OR :end_ts >= tasks.ended_at)
        THEN :end_ts ELSE tasks.ended_at END,
    last_seen = max(COALESCE(tasks.last_seen, :last_ts), :last_ts),
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

_END_STATUS_ALIASES: dict[str, RunStatus] = {
    "succeeded": RunStatus.SUCCEEDED,
    "success": RunStatus.SUCCEEDED,
    "successful": RunStatus.SUCCEEDED,
    "ok": RunStatus.SUCCEEDED,
    "completed": RunStatus.SUCCEEDED,
    "complete": RunStatus.SUCCEEDED,
    "done": RunStatus.SUCCEEDED,
    "failed": RunStatus.FAILED,
    "failure": RunStatus.FAILED,
    "fail": RunStatus.FAILED,
    "error": RunStatus.FAILED,
    "errored": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
    "canceled": RunStatus.CANCELLED,
    "aborted": RunStatus.CANCELLED,
    "timeout": RunStatus.TIMEOUT,
    "timed_out": RunStatus.TIMEOUT,
    "timedout": RunStatus.TIMEOUT,
    "deadline_exceeded": RunStatus.TIMEOUT,
}


def normalize_end_status(status: str) -> RunStatus | None:
    """The terminal status a run.end's `status` names, or None when it names none (the store
    then decides: failed if the run has errors, else succeeded)."""
    return _END_STATUS_ALIASES.get(status.strip().lower().replace("-", "_").replace(" ", "_"))


TRIAGE_TRANSITIONS: dict[TriageState, frozenset[TriageState]] = {
    TriageState.NEW: frozenset({TriageState.ACKED, TriageState.RESOLVED, TriageState.IGNORED}),
    TriageState.ACKED: frozenset({TriageState.RESOLVED, TriageState.IGNORED, TriageState.NEW}),
    TriageState.RESOLVED: frozenset({TriageState.NEW, TriageState.ACKED}),
    TriageState.IGNORED: frozenset({TriageState.NEW}),
}

# ASCII-only lower-casing for the text filter: SQLite's lower() folds ASCII only, so folding
# more on the Python side would make non-ASCII needles miss their own spelling.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _format_error(event: AgentEvent) -> str:
    if event.error_type and event.error_message:
        msg = event.error_message
        # "KeyError: 'x'" already names its type: do not say it twice
        text = msg if msg.startswith(event.error_type) else f"{event.error_type}: {msg}"
    else:
        text = event.error_type or event.error_message
    return text[:LAST_ERROR_MAX]


def _fold(run_id: str, events: Sequence[AgentEvent], tenant: str) -> dict[str, Any]:
    """One run's events of a batch -> the parameters of one upsert."""
    first_ts = last_ts = events[0].ts
    agent = task = ""
    start: AgentEvent | None = None
    end: AgentEvent | None = None
    error: AgentEvent | None = None
    model = ""
    model_at: int | None = None
    steps = errors = in_tok = out_tok = 0
    cost = 0.0
    for ev in events:
        ts = ev.ts
        if ts < first_ts:
            first_ts = ts
        if ts > last_ts:
            last_ts = ts
        if not agent and ev.agent:
            agent = ev.agent
        if not task and ev.task:
            task = ev.task
        kind = ev.kind
        if kind is EventKind.RUN_START:
            if start is None or ts < start.ts:
                start = ev
        elif kind is EventKind.RUN_END:
            if end is None or ts >= end.ts:
                end = ev
        elif kind is EventKind.ERROR:
            errors += 1
            if (ev.error_type or ev.error_message) and (error is None or ts >= error.ts):
                error = ev
        elif kind is EventKind.LLM_CALL or kind is EventKind.STEP or kind is EventKind.TOOL_CALL:
            steps += 1
            if kind is EventKind.LLM_CALL:
                in_tok += ev.input_tokens
                out_tok += ev.output_tokens
                cost += ev.cost_usd
        is_model_event = kind is EventKind.LLM_CALL or kind is EventKind.RUN_START
        if ev.model and is_model_event and (model_at is None or ts >= model_at):
            model, model_at = ev.model, ts
    start_agent = start.agent if start else ""
    start_task = start.task if start else ""
    end_status = normalize_end_status(end.status) if end else None
    return {
        "tenant": tenant,
        "run_id": run_id,
        "agent": start_agent or agent,
        "task": start_task or task,
        "start_agent": start_agent,
        "start_task": start_task,
        "has_start": 1 if start else 0,
        "start_ts": start.ts if start else None,
        "first_ts": first_ts,
        "last_ts": last_ts,
        "end_ts": end.ts if end else None,
        "end_status": end_status.value if end_status else None,
        "steps": steps,
        "errors": errors,
        "last_error": _format_error(error) if error else "",
        "last_error_at": error.ts if error else None,
        "model": model,
        "model_at": model_at,
        "input_tokens": in_tok,
        "output_tokens": out_tok,
        "cost": cost,
    }


# ---------------------------------------------------------------- filters and cursors


def _where(flt: TaskFilter, params: dict[str, Any]) -> str:
    """The WHERE clause (without the keyset part) for a filter; fills `params`."""
    clauses = ["tenant = :tenant"]
    params["tenant"] = flt.tenant
    if flt.statuses:
        parts = []
        stored = sorted(
            {RunStatus(s).value for s in flt.statuses} - {RunStatus.RUNNING, RunStatus.STALLED}
        )
        if stored:
            params["statuses"] = orjson.dumps(stored).decode()
            parts.append("status IN (SELECT value FROM json_each(:statuses))")
        if RunStatus.RUNNING in flt.statuses and RunStatus.STALLED in flt.statuses:
            parts.append("status = 'running'")
        elif RunStatus.RUNNING in flt.statuses:
            parts.append("(status = 'running' AND (last_seen IS NULL OR last_seen >= :cutoff))")
        elif RunStatus.STALLED in flt.statuses:
            parts.append("(status = 'running' AND last_seen < :cutoff)")
        clauses.append("(" + " OR ".join(parts) + ")")
    if flt.agents:
        params["agents"] = orjson.dumps(list(flt.agents)).decode()
        clauses.append("agent IN (SELECT value FROM json_each(:agents))")
    if flt.triage:
        params["triage"] = orjson.dumps([TriageState(t).value for t in flt.triage]).decode()
        clauses.append("triage IN (SELECT value FROM json_each(:triage))")
    if flt.run_ids:
        params["run_ids"] = orjson.dumps(list(flt.run_ids)).decode()
        clauses.append("run_id IN (SELECT value FROM json_each(:run_ids))")
    if flt.since_ns is not None:
        params["since"] = flt.since_ns
        clauses.append("sort_ts >= :since")
    if flt.until_ns is not None:
        params["until"] = flt.until_ns
        clauses.append("sort_ts < :until")
    if flt.text:
        params["text"] = flt.text.translate(_ASCII_LOWER)
        clauses.append(
            "(instr(lower(task), :text) OR instr(lower(run_id), :text)"
            " OR instr(lower(last_error), :text) OR instr(lower(agent), :text))"
        )
    return " AND ".join(clauses)


@dataclass(frozen=True, slots=True)
class _Cursor:
    sort: str
    cutoff: int
    group: int  # failing-first only: 0 failing, 1 the rest
    ts: int
    run_id: str


def _encode_cursor(cur: _Cursor) -> str:
    raw = orjson.dumps([1, cur.sort, cur.cutoff, cur.group, cur.ts, cur.run_id])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(text: str, sort: TaskSort) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        version, sort_name, cutoff, group, ts, run_id = orjson.loads(raw)
        ok = (
            version == 1
            and isinstance(sort_name, str)
            and all(type(v) is int for v in (cutoff, group, ts))
            and group in (0, 1)
            and isinstance(run_id, str)
        )
    except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
        ok = False
    if not ok:
        raise UsageError("invalid page cursor: pass back next_cursor exactly as a list returned it")
    if sort_name != sort.value:
        raise UsageError(
            f"page cursor belongs to sort {sort_name!r}, not {sort.value!r}: "
            "start again without a cursor when changing the sort"
        )
    return _Cursor(sort_name, cutoff, group, ts, run_id)


def _row_to_task(row: sqlite3.Row) -> Task:
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


def _fetch_task(conn: sqlite3.Connection, tenant: str, run_id: str, cutoff: int) -> Task | None:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    row = cur.execute(
        f"SELECT {_TASK_COLUMNS}, {_STATUS_EXPR} AS dstatus FROM tasks"
        " WHERE tenant = :tenant AND run_id = :run_id",
        {"tenant": tenant, "run_id": run_id, "cutoff": cutoff},
    ).fetchone()
    return None if row is None else _row_to_task(row)


# ---------------------------------------------------------------- the store


class SqliteTaskStore:
    """ports.TaskStore on a SQLite file. `await store.open()` creates or checks the schema (it is
    idempotent, and the first call of any other method does it too); `await store.close()` at
    the end.

    The store owns `PRAGMA user_version` of its file: give it its own file, or share the file only
    with something that leaves user_version alone.
    """

    def __init__(
        self,
        path: Path,
        *,
        stall_after_s: float = 600.0,
        clock: Callable[[], int] = time.time_ns,
        readers: int = 2,
        busy_timeout_ms: int = 5000,
    ) -> None:
        self.path = Path(path)
        self.stall_after_ns = int(stall_after_s * 1e9)
        self._clock = clock
        self._db = SqliteExecutor(self.path, readers=readers, busy_timeout_ms=busy_timeout_ms)
        self._opened = False

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the schema (or check that an existing file's schema is one this code knows)."""
        if self._opened:
            return

        def migrate(conn: sqlite3.Connection) -> None:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"SQLite database {self.path} has task schema version {version}, newer than "
                    f"this agentlog understands ({SCHEMA_VERSION}): upgrade agentlog"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

        await self._db.write(migrate)
        self._opened = True

    async def close(self) -> None:
        await self._db.close()

    def _cutoff(self) -> int:
        return self._clock() - self.stall_after_ns

    async def _ensure_open(self) -> None:
        if not self._opened:
            await self.open()

    # ------------------------------------------------------------ writes

    async def apply_events(self, events: Sequence[AgentEvent], tenant: str = DEFAULT_TENANT) -> int:
        """Fold a batch into run records in one transaction, one upsert per run."""
        await self._ensure_open()
        if not events:
            return 0
        by_run: dict[str, builtins.list[AgentEvent]] = {}
        for ev in events:
            if ev.run_id:
                by_run.setdefault(ev.run_id, []).append(ev)
        if not by_run:
            return 0
        rows = [_fold(run_id, evs, tenant) for run_id, evs in by_run.items()]

        def upsert(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT, rows)

        await self._db.write(upsert)
        return len(rows)

    async def set_triage(
        self,
        run_id: str,
        state: TriageState,
        *,
        by: str,
        note: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Task:
        await self._ensure_open()
        try:
            target = TriageState(state)
        except ValueError:
            names = ", ".join(s.value for s in TriageState)
            raise UsageError(f"unknown triage state {state!r}: expected one of {names}") from None
        now = self._clock()
        cutoff = now - self.stall_after_ns

        def change(conn: sqlite3.Connection) -> Task:
            task = _fetch_task(conn, tenant, run_id, cutoff)
            if task is None:
                raise NotFound(f"no run {run_id!r} (tenant {tenant!r})")
            if task.triage == target:
                return task
            if target not in TRIAGE_TRANSITIONS[task.triage]:
                raise InvalidTransition(
                    f"cannot change triage of run {run_id!r} from {task.triage.value} to "
                    f"{target.value}"
                )
            conn.execute(
                "UPDATE tasks SET triage = ?, triage_by = ?, triage_note = ?, triage_at = ?"
                " WHERE tenant = ? AND run_id = ?",
                (target.value, by, note, now, tenant, run_id),
            )
            task.triage, task.triage_by, task.triage_note, task.triage_at = target, by, note, now
            return task

        return await self._db.write(change)

    async def set_status(
        self, run_id: str, status: str, *, at_ns: int | None = None, tenant: str = DEFAULT_TENANT
    ) -> Task:
        """End a running (or stalled) run by hand. Only terminal statuses; setting an ended run to
        its own status again is a no-op; any other change is an InvalidTransition."""
        await self._ensure_open()
        try:
            target = RunStatus(status.strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in RunStatus)
            raise UsageError(f"unknown run status {status!r}: expected one of {names}") from None
        now = self._clock()
        ended_at = now if at_ns is None else at_ns
        cutoff = now - self.stall_after_ns

        def change(conn: sqlite3.Connection) -> Task:
            task = _fetch_task(conn, tenant, run_id, cutoff)
            if task is None:
                raise NotFound(f"no run {run_id!r} (tenant {tenant!r})")
            current = task.status
            if current == target and current in TERMINAL_STATUSES:
                return task
            running = current in (RunStatus.RUNNING, RunStatus.STALLED)
            if not running or target not in TERMINAL_STATUSES:
                raise InvalidTransition(
                    f"cannot change status of run {run_id!r} from {current.value} to "
                    f"{target.value}: only a running or stalled run can be ended, and only with "
                    "succeeded, failed, cancelled or timeout"
                )
            conn.execute(
                "UPDATE tasks SET status = ?, ended_at = ? WHERE tenant = ? AND run_id = ?",
                (target.value, ended_at, tenant, run_id),
            )
            task.status, task.ended_at = target, ended_at
            return task

        return await self._db.write(change)

    async def save_summary(self, summary: Summary, tenant: str = DEFAULT_TENANT) -> None:
        await self._ensure_open()
        created = summary.created_at or self._clock()
        params = (
            tenant,
            summary.run_id,
            summary.input_hash,
            summary.model,
            summary.text,
            1 if summary.offline else 0,
            summary.input_tokens,
            summary.output_tokens,
            summary.cost_usd,
            created,
            summary.error,
        )

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO summaries (tenant, run_id, input_hash, model, text,"
                " offline, input_tokens, output_tokens, cost_usd, created_at, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )

        await self._db.write(save)

    # ------------------------------------------------------------ reads

    async def get(self, run_id: str, tenant: str = DEFAULT_TENANT) -> Task | None:
        await self._ensure_open()
        cutoff = self._cutoff()
        return await self._db.read(lambda conn: _fetch_task(conn, tenant, run_id, cutoff))

    async def get_summary(
        self, run_id: str, input_hash: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> Summary | None:
        """The newest summary of a run, or of a run and log hash (any model)."""
        await self._ensure_open()
        sql = (
            "SELECT run_id, text, model, offline, input_hash, input_tokens, output_tokens,"
            " cost_usd, created_at, error FROM summaries WHERE tenant = ? AND run_id = ?"
        )
        args: tuple[str, ...] = (tenant, run_id)
        if input_hash is not None:
            sql += " AND input_hash = ?"
            args = (*args, input_hash)
        sql += " ORDER BY created_at DESC LIMIT 1"

        def fetch(conn: sqlite3.Connection) -> Summary | None:
            row = conn.execute(sql, args).fetchone()
            if row is None:
                return None
            return Summary(
                run_id=row[0],
                text=row[1],
                model=row[2],
                offline=bool(row[3]),
                input_hash=row[4],
                input_tokens=row[5],
                output_tokens=row[6],
                cost_usd=row[7],
                created_at=row[8],
                error=row[9],
            )

        return await self._db.read(fetch)

    async def counts(self, flt: TaskFilter) -> dict[str, int]:
        """Runs by status (stalled derived) among those matching the whole filter; every status
        is present, with 0 when none match."""
        await self._ensure_open()
        params: dict[str, Any] = {"cutoff": self._cutoff()}
        where = _where(flt, params)
        sql = f"SELECT {_STATUS_EXPR} AS s, count(*) FROM tasks WHERE {where} GROUP BY s"

        def fetch(conn: sqlite3.Connection) -> dict[str, int]:
            result = {s.value: 0 for s in RunStatus}
            for status, n in conn.execute(sql, params):
                result[status] = n
            return result

        return await self._db.read(fetch)

    async def health(self) -> SourceHealth:
        started = time.perf_counter()
        try:
            await self._ensure_open()
            await self._db.read(lambda conn: conn.execute("SELECT 1 FROM tasks LIMIT 1").fetchall())
        except StorageError as exc:
            return SourceHealth(
                name="tasks",
                kind="sqlite",
                state=HealthState.DOWN,
                detail=str(self.path),
                reason=str(exc),
                since=self._clock(),
            )
        return SourceHealth(
            name="tasks",
            kind="sqlite",
            detail=str(self.path),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

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
        await self._ensure_open()
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        sort = TaskSort(sort)
        cur = _decode_cursor(cursor, sort) if cursor else None
        cutoff = cur.cutoff if cur else self._cutoff()
        params: dict[str, Any] = {"cutoff": cutoff}
        where = _where(flt, params)
        select = f"SELECT {_TASK_COLUMNS}, {_STATUS_EXPR} AS dstatus FROM tasks WHERE {where}"
        desc = sort is not TaskSort.OLDEST
        order = " ORDER BY sort_ts DESC, run_id DESC" if desc else " ORDER BY sort_ts, run_id"
        # The plain `sort_ts <=`/`>=` bound lets SQLite seek the index to the cursor; the row
        # value alone is applied as a filter after a scan from the top of the range, so deep
        # pages would get slower and slower.
        keyset = (
            " AND sort_ts <= :cts AND (sort_ts, run_id) < (:cts, :crid)"
            if desc
            else " AND sort_ts >= :cts AND (sort_ts, run_id) > (:cts, :crid)"
        )
        if cur:
            params["cts"], params["crid"] = cur.ts, cur.run_id
            # SQLite seeks with ONE bound per side: in the segment the cursor continues, fold the
            # cursor into the filter's own time bound, or that one wins and every page scans
            # down from the top of the range.
            params["kuntil"] = min(params.get("until", cur.ts + 1), cur.ts + 1)
            params["ksince"] = max(params.get("since", cur.ts), cur.ts)

        # Failing-first runs as two ordered index scans (failing, then the rest) rather than one
        # sort over the whole table; newest-first inside each group.
        segments: builtins.list[tuple[int, str]]
        if sort is TaskSort.FAILING_FIRST:
            segments = [(0, f" AND {_FAILING_EXPR}"), (1, f" AND NOT {_FAILING_EXPR}")]
            if cur and cur.group == 1:
                segments = segments[1:]
        else:
            segments = [(0, "")]

        def fetch(conn: sqlite3.Connection) -> builtins.list[tuple[int, sqlite3.Row]]:
            db = conn.cursor()
            db.row_factory = sqlite3.Row
            out: builtins.list[tuple[int, sqlite3.Row]] = []
            for group, extra in segments:
                want = limit + 1 - len(out)
                if want <= 0:
                    break
                use_keyset = cur is not None and cur.group == group
                base = select
                if use_keyset and desc and "until" in params:
                    base = base.replace("sort_ts < :until", "sort_ts < :kuntil")
                elif use_keyset and not desc and "since" in params:
                    base = base.replace("sort_ts >= :since", "sort_ts >= :ksince")
                sql = base + extra + (keyset if use_keyset else "") + order + f" LIMIT {want}"
                out.extend((group, row) for row in db.execute(sql, params))
            return out

        rows = await self._db.read(fetch)
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            group, last = rows[-1]
            next_cursor = _encode_cursor(
                _Cursor(sort.value, cutoff, group, last["sort_ts"], last["run_id"])
            )
        return TaskPage(tasks=[_row_to_task(row) for _, row in rows], next_cursor=next_cursor)
