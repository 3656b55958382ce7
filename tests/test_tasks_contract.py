"""The TaskStore contract: one behaviour suite run against every TaskStore.

Each test runs twice, on the SQLite store (backend.embedded.tasks) and on the PostgreSQL store
(backend.postgres.tasks): same calls, same answers. Each PostgreSQL test gets its own schema
(random name), dropped at teardown; the server is the `postgres_dsn` fixture's (these tests fail,
not skip, in CI when it is missing). Store-specific tests live in test_tasks_sqlite.py and
test_tasks_postgres.py.
"""

from __future__ import annotations

import base64
import random
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from backend.embedded.tasks import TRIAGE_TRANSITIONS, SqliteTaskStore
from backend.errors import InvalidTransition, NotFound, UsageError
from backend.models import (
    FAILING_STATUSES,
    AgentEvent,
    EventKind,
    HealthState,
    RunStatus,
    Summary,
    Task,
    TaskFilter,
    TaskSort,
    TriageState,
)
from backend.postgres.tasks import PostgresTaskStore

Store = SqliteTaskStore | PostgresTaskStore

S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S
STALL_S = 600.0
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Clock:
    """An injectable clock (ns) the tests move by hand."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 60 * S)


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def make_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Clock, name: str = "tasks"
) -> AsyncIterator[Store]:
    if kind == "sqlite":
        lite = SqliteTaskStore(tmp_path / "db" / f"{name}.db", stall_after_s=STALL_S, clock=clock)
        await lite.open()
        try:
            yield lite
        finally:
            await lite.close()
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = f"test_{name}_{secrets.token_hex(6)}"
    pg = PostgresTaskStore(dsn, schema=schema, stall_after_s=STALL_S, clock=clock, pool_max=4)
    try:
        await pg.open()
        yield pg
    finally:
        await pg.close()
        await drop_schema(dsn, schema)


@pytest.fixture(params=STORES)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[Store]:
    async for st in make_store(request.param, request, tmp_path, clock):
        yield st


def e(kind: EventKind, run: str, ts: int, **kw: object) -> AgentEvent:
    return AgentEvent(ts=ts, run_id=run, kind=kind, **kw)  # type: ignore[arg-type]


async def got(store: Store, run_id: str, tenant: str = "fake") -> Task:
    task = await store.get(run_id, tenant)
    assert task is not None, run_id
    return task


async def all_ids(store: Store, flt: TaskFilter, sort: TaskSort) -> list[str]:
    page = await store.list(flt, sort=sort, limit=10_000)
    assert page.next_cursor is None
    return [t.run_id for t in page.tasks]


# ---------------------------------------------------------------- folding


async def test_fold_a_whole_run(store: Store) -> None:
    events = [
        e(EventKind.RUN_START, "r1", T0, agent="planner", task="fix bug", model="m0"),
        e(EventKind.STEP, "r1", T0 + 1 * S),
        e(EventKind.TOOL_CALL, "r1", T0 + 2 * S, tool="grep"),
        e(
            EventKind.LLM_CALL,
            "r1",
            T0 + 3 * S,
            model="m1",
            input_tokens=100,
            output_tokens=10,
            cost_usd=0.25,
        ),
        e(
            EventKind.LLM_CALL,
            "r1",
            T0 + 4 * S,
            model="m2",
            input_tokens=50,
            output_tokens=5,
            cost_usd=0.5,
        ),
        e(EventKind.ERROR, "r1", T0 + 5 * S, error_type="ValueError", error_message="bad"),
        e(EventKind.LOG, "r1", T0 + 6 * S),
        e(EventKind.RUN_END, "r1", T0 + 7 * S, status="failed"),
    ]
    assert await store.apply_events(events) == 1
    t = await got(store, "r1")
    assert (t.agent, t.task, t.status, t.triage) == (
        "planner",
        "fix bug",
        RunStatus.FAILED,
        TriageState.NEW,
    )
    assert (t.started_at, t.ended_at, t.last_seen) == (T0, T0 + 7 * S, T0 + 7 * S)
    assert (t.step_count, t.error_count) == (4, 1)
    assert (t.input_tokens, t.output_tokens, t.cost_usd) == (150, 15, 0.75)
    assert t.model == "m2"
    assert t.last_error == "ValueError: bad"
    assert t.duration_ns == 7 * S


async def test_counters_add_across_batches_and_runs_touched(store: Store) -> None:
    batch = [
        e(EventKind.LLM_CALL, f"r{i % 3}", T0 + i, input_tokens=1, cost_usd=0.5) for i in range(9)
    ]
    assert await store.apply_events(batch) == 3
    assert await store.apply_events(batch) == 3
    t = await got(store, "r0")
    assert (t.step_count, t.input_tokens, t.cost_usd) == (6, 6, 3.0)
    assert await store.apply_events([]) == 0


async def test_new_run_defaults_and_error_without_end_stays_running(
    store: Store,
) -> None:
    await store.apply_events([e(EventKind.ERROR, "r", T0 + 30 * S, error_message="oops")])
    t = await got(store, "r")
    assert (t.status, t.triage, t.error_count, t.last_error) == (
        RunStatus.RUNNING,
        TriageState.NEW,
        1,
        "oops",
    )
    assert t.started_at == T0 + 30 * S and t.ended_at is None


async def test_started_at_is_earliest_event_until_a_run_start(store: Store) -> None:
    await store.apply_events([e(EventKind.STEP, "r", T0 + 10 * S)])
    await store.apply_events(
        [e(EventKind.STEP, "r", T0 + 5 * S), e(EventKind.LOG, "r", T0 + 8 * S)]
    )
    assert (await got(store, "r")).started_at == T0 + 5 * S
    # run.start is authoritative once seen; later plain events no longer move it.
    await store.apply_events([e(EventKind.RUN_START, "r", T0 + 6 * S, agent="a", task="t")])
    await store.apply_events([e(EventKind.LOG, "r", T0 + 1 * S)])
    t = await got(store, "r")
    assert (t.started_at, t.agent, t.task) == (T0 + 6 * S, "a", "t")
    assert t.last_seen == T0 + 10 * S


async def test_late_run_start_does_not_reopen_an_ended_run(store: Store) -> None:
    await store.apply_events(
        [
            e(EventKind.STEP, "r", T0 + 2 * S),
            e(EventKind.RUN_END, "r", T0 + 9 * S, status="succeeded"),
        ]
    )
    await store.apply_events([e(EventKind.RUN_START, "r", T0 + 1 * S, agent="late")])
    t = await got(store, "r")
    assert (t.status, t.started_at, t.ended_at, t.agent) == (
        RunStatus.SUCCEEDED,
        T0 + 1 * S,
        T0 + 9 * S,
        "late",
    )
    # Same within one batch, in reverse order.
    await store.apply_events(
        [
            e(EventKind.RUN_END, "q", T0 + 9 * S, status="timeout"),
            e(EventKind.RUN_START, "q", T0 + 1 * S),
        ]
    )
    assert (await got(store, "q")).status is RunStatus.TIMEOUT


async def test_newest_run_end_wins_and_older_end_is_ignored(store: Store) -> None:
    await store.apply_events([e(EventKind.RUN_END, "r", T0 + 9 * S, status="cancelled")])
    await store.apply_events([e(EventKind.RUN_END, "r", T0 + 5 * S, status="succeeded")])
    t = await got(store, "r")
    assert (t.status, t.ended_at) == (RunStatus.CANCELLED, T0 + 9 * S)
    await store.apply_events(
        [
            e(EventKind.RUN_END, "r", T0 + 10 * S, status="failed"),
            e(EventKind.RUN_END, "r", T0 + 11 * S, status="timed_out"),
        ]
    )
    assert (await got(store, "r")).status is RunStatus.TIMEOUT


async def test_last_error_follows_newest_error_by_event_time(store: Store) -> None:
    await store.apply_events(
        [e(EventKind.ERROR, "r", T0 + 9 * S, error_type="New", error_message="n")]
    )
    await store.apply_events(
        [e(EventKind.ERROR, "r", T0 + 1 * S, error_type="Old", error_message="o")]
    )
    t = await got(store, "r")
    assert (t.error_count, t.last_error) == (2, "New: n")
    await store.apply_events([e(EventKind.ERROR, "r", T0 + 20 * S, error_type="OnlyType")])
    assert (await got(store, "r")).last_error == "OnlyType"


async def test_last_error_is_truncated(store: Store) -> None:
    await store.apply_events(
        [e(EventKind.ERROR, "r", T0, error_type="E", error_message="x" * 2000)]
    )
    t = await got(store, "r")
    assert len(t.last_error) == 500 and t.last_error.startswith("E: xxx")


@pytest.mark.parametrize(
    ("status", "with_error", "expected"),
    [
        ("succeeded", True, RunStatus.SUCCEEDED),  # an explicit status wins over errors
        ("ok", False, RunStatus.SUCCEEDED),
        ("Canceled", False, RunStatus.CANCELLED),
        ("deadline-exceeded", False, RunStatus.TIMEOUT),
        ("error", False, RunStatus.FAILED),
        ("", False, RunStatus.SUCCEEDED),
        ("", True, RunStatus.FAILED),
        ("weird", False, RunStatus.SUCCEEDED),
        ("weird", True, RunStatus.FAILED),
    ],
)
async def test_end_status_mapping(
    store: Store, status: str, with_error: bool, expected: RunStatus
) -> None:
    if with_error:  # in an earlier batch, so the store (not the batch) must know about it
        await store.apply_events([e(EventKind.ERROR, "r", T0, error_message="x")])
    await store.apply_events([e(EventKind.RUN_END, "r", T0 + S, status=status)])
    assert (await got(store, "r")).status is expected


async def test_model_follows_newest_model_event(store: Store) -> None:
    await store.apply_events([e(EventKind.LLM_CALL, "r", T0 + 5 * S, model="newer")])
    await store.apply_events([e(EventKind.RUN_START, "r", T0, model="older")])
    assert (await got(store, "r")).model == "newer"


async def test_tenants_are_separate(store: Store) -> None:
    await store.apply_events([e(EventKind.STEP, "r", T0)], tenant="a")
    await store.apply_events([e(EventKind.STEP, "r", T0), e(EventKind.STEP, "r", T0)], tenant="b")
    assert (await got(store, "r", "a")).step_count == 1
    assert (await got(store, "r", "b")).step_count == 2
    assert await store.get("r") is None
    assert [t.run_id for t in (await store.list(TaskFilter(tenant="b"))).tasks] == ["r"]


async def test_folding_5k_events_is_fast(store: Store) -> None:
    kinds = [
        EventKind.RUN_START,
        EventKind.STEP,
        EventKind.TOOL_CALL,
        EventKind.LLM_CALL,
        EventKind.LOG,
        EventKind.ERROR,
        EventKind.STEP,
        EventKind.LLM_CALL,
        EventKind.LOG,
        EventKind.RUN_END,
    ]
    events = [
        e(
            kinds[i % 10],
            f"run-{i // 10:04d}",
            T0 + i,
            agent="a",
            input_tokens=2,
            error_type="E",
            status="failed",
        )
        for i in range(5000)
    ]
    started = time.perf_counter()
    assert await store.apply_events(events) == 500
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"5k events took {elapsed:.3f} s"
    counts = await store.counts(TaskFilter())
    assert counts["failed"] == 500
    t = await got(store, "run-0007")
    assert (t.step_count, t.error_count, t.input_tokens) == (5, 1, 4)


# ---------------------------------------------------------------- stalled


async def test_stalled_is_derived_from_the_clock(store: Store, clock: Clock) -> None:
    clock.now = T0
    await store.apply_events(
        [
            e(EventKind.RUN_START, "quiet", T0 - 700 * S),
            e(EventKind.RUN_START, "busy", T0 - 700 * S),
            e(EventKind.STEP, "busy", T0 - 10 * S),
            e(EventKind.RUN_END, "done", T0 - 700 * S, status="succeeded"),
        ]
    )
    assert (await got(store, "quiet")).status is RunStatus.STALLED
    assert (await got(store, "busy")).status is RunStatus.RUNNING
    assert (await got(store, "done")).status is RunStatus.SUCCEEDED

    running = await all_ids(store, TaskFilter(statuses=(RunStatus.RUNNING,)), TaskSort.NEWEST)
    stalled = await all_ids(store, TaskFilter(statuses=(RunStatus.STALLED,)), TaskSort.NEWEST)
    both = TaskFilter(statuses=(RunStatus.RUNNING, RunStatus.STALLED))
    assert (running, stalled) == (["busy"], ["quiet"])
    assert sorted(await all_ids(store, both, TaskSort.NEWEST)) == ["busy", "quiet"]
    counts = await store.counts(TaskFilter())
    assert counts == {
        "running": 1,
        "stalled": 1,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "timeout": 0,
    }

    clock.now = T0 + 600 * S  # busy is now silent for 610 s
    assert (await got(store, "busy")).status is RunStatus.STALLED
    await store.apply_events([e(EventKind.LOG, "quiet", T0 + 599 * S)])  # it speaks again
    assert (await got(store, "quiet")).status is RunStatus.RUNNING


# ---------------------------------------------------------------- filters


@pytest.fixture
async def fleet(store: Store, clock: Clock) -> Store:
    clock.now = T0 + 3600 * S
    await store.apply_events(
        [
            e(
                EventKind.RUN_START,
                "alpha-1",
                T0 + 100 * S,
                agent="planner",
                task="Refactor Parser",
            ),
            e(EventKind.RUN_END, "alpha-1", T0 + 200 * S, status="succeeded"),
            e(EventKind.RUN_START, "beta-2", T0 + 300 * S, agent="coder", task="write tests"),
            e(
                EventKind.ERROR,
                "beta-2",
                T0 + 310 * S,
                error_type="TimeoutError",
                error_message="Upstream GATEWAY slow",
            ),
            e(EventKind.RUN_END, "beta-2", T0 + 320 * S, status="failed"),
            e(EventKind.RUN_START, "gamma-3", T0 + 400 * S, agent="coder", task="deploy"),
            e(EventKind.RUN_START, "delta-4", T0 + 3500 * S, agent="reviewer", task="review PR"),
            e(EventKind.RUN_START, "eps-5", T0 + 500 * S, agent="planner", task="plan"),
            e(EventKind.RUN_END, "eps-5", T0 + 550 * S, status="timeout"),
            e(EventKind.RUN_START, "zeta-6", T0 + 600 * S, agent="reviewer", task="lint"),
            e(EventKind.RUN_END, "zeta-6", T0 + 650 * S, status="cancelled"),
        ]
    )
    await store.set_triage("alpha-1", TriageState.ACKED, by="ann")
    await store.set_triage("beta-2", TriageState.RESOLVED, by="bob")
    return store


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (TaskFilter(), {"alpha-1", "beta-2", "gamma-3", "delta-4", "eps-5", "zeta-6"}),
        (TaskFilter(statuses=(RunStatus.FAILED, RunStatus.TIMEOUT)), {"beta-2", "eps-5"}),
        (TaskFilter(statuses=(RunStatus.STALLED,)), {"gamma-3"}),
        (TaskFilter(statuses=(RunStatus.RUNNING,)), {"delta-4"}),
        (TaskFilter(statuses=(RunStatus.CANCELLED, RunStatus.STALLED)), {"zeta-6", "gamma-3"}),
        (TaskFilter(agents=("coder", "reviewer")), {"beta-2", "gamma-3", "delta-4", "zeta-6"}),
        (TaskFilter(triage=(TriageState.ACKED, TriageState.RESOLVED)), {"alpha-1", "beta-2"}),
        (TaskFilter(triage=(TriageState.NEW,)), {"gamma-3", "delta-4", "eps-5", "zeta-6"}),
        (TaskFilter(since_ns=T0 + 300 * S), {"beta-2", "gamma-3", "delta-4", "eps-5", "zeta-6"}),
        (TaskFilter(until_ns=T0 + 300 * S), {"alpha-1"}),  # until is exclusive
        (TaskFilter(since_ns=T0 + 400 * S, until_ns=T0 + 600 * S), {"gamma-3", "eps-5"}),
        (TaskFilter(text="parser"), {"alpha-1"}),  # task name, case-insensitive
        (TaskFilter(text="BETA"), {"beta-2"}),  # run id
        (TaskFilter(text="gateway"), {"beta-2"}),  # last error
        (TaskFilter(text="Review"), {"delta-4", "zeta-6"}),  # agent (and task)
        (TaskFilter(text="no such thing"), set()),
        (TaskFilter(run_ids=("gamma-3", "eps-5", "missing")), {"gamma-3", "eps-5"}),
        (TaskFilter(agents=("coder",), statuses=(RunStatus.FAILED,)), {"beta-2"}),
        (TaskFilter(tenant="other"), set()),
    ],
)
async def test_filters(fleet: Store, flt: TaskFilter, expected: set[str]) -> None:
    for sort in TaskSort:
        assert set(await all_ids(fleet, flt, sort)) == expected
    counts = await fleet.counts(flt)
    assert sum(counts.values()) == len(expected)
    assert set(counts) == {s.value for s in RunStatus}


async def test_counts_per_status(fleet: Store) -> None:
    assert await fleet.counts(TaskFilter()) == {
        "running": 1,
        "stalled": 1,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
        "timeout": 1,
    }
    assert (await fleet.counts(TaskFilter(agents=("planner",))))["timeout"] == 1


# ---------------------------------------------------------------- sorts


async def test_sort_orders(fleet: Store) -> None:
    assert await all_ids(fleet, TaskFilter(), TaskSort.FAILING_FIRST) == [
        "eps-5",
        "gamma-3",
        "beta-2",  # timeout, stalled, failed: newest started first
        "delta-4",
        "zeta-6",
        "alpha-1",
    ]
    assert await all_ids(fleet, TaskFilter(), TaskSort.NEWEST) == [
        "delta-4",
        "zeta-6",
        "eps-5",
        "gamma-3",
        "beta-2",
        "alpha-1",
    ]
    assert await all_ids(fleet, TaskFilter(), TaskSort.OLDEST) == [
        "alpha-1",
        "beta-2",
        "gamma-3",
        "eps-5",
        "zeta-6",
        "delta-4",
    ]


def _key(task: Task, sort: TaskSort) -> tuple[int, int, str]:
    ts = task.started_at if task.started_at is not None else 0
    if sort is TaskSort.OLDEST:
        return (0, ts, task.run_id)
    group = 0 if (sort is TaskSort.FAILING_FIRST and task.status in FAILING_STATUSES) else 1
    # descending ts and run id: compare on the negated / reversed values
    return (group, -ts, "".join(chr(0x10FFFF - ord(c)) for c in task.run_id))


@pytest.mark.parametrize("sort", list(TaskSort))
async def test_keyset_pagination_visits_each_run_once_while_runs_arrive(
    store: Store, clock: Clock, sort: TaskSort
) -> None:
    clock.now = T0 + 10_000 * S
    statuses = ["succeeded", "failed", "timeout", "cancelled", None]
    events: list[AgentEvent] = []
    for i in range(250):
        run = f"run-{i:03d}"
        started = T0 + (i % 50) * 100 * S  # many equal start times: the run id breaks ties
        events.append(e(EventKind.RUN_START, run, started))
        status = statuses[i % 5]
        if status is None:  # running, silent for 0..900 s: some stalled, some stall mid-walk
            events.append(e(EventKind.STEP, run, clock.now - (i * 37 % 900) * S))
        else:
            events.append(e(EventKind.RUN_END, run, started + S, status=status))
    await store.apply_events(events)
    original = {f"run-{i:03d}" for i in range(250)}

    seen: list[Task] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list(TaskFilter(), sort=sort, limit=17, cursor=cursor)
        seen.extend(page.tasks)
        pages += 1
        # Meanwhile: new runs before, inside and after the visited range, and time moves on
        # (running runs that go stalled now must not jump groups mid-walk).
        await store.apply_events(
            [e(EventKind.RUN_START, f"new-{pages}-{j}", T0 + j * 1250 * S) for j in range(5)]
            + [e(EventKind.RUN_END, f"new-{pages}-1", T0 + 1250 * S + 1, status="failed")]
        )
        clock.now += 30 * S
        if page.next_cursor is None:
            break
        assert pages < 60, "pagination does not terminate"
        cursor = page.next_cursor
    ids = [t.run_id for t in seen]
    assert len(ids) == len(set(ids)), "a run was visited twice"
    assert original <= set(ids), "a run was skipped"
    keys = [_key(t, sort) for t in seen]
    assert keys == sorted(keys)
    assert pages >= 250 // 17


async def test_failing_first_pages_cross_the_group_boundary(fleet: Store) -> None:
    ids: list[str] = []
    cursor = None
    for _ in range(6):
        page = await fleet.list(TaskFilter(), limit=2, cursor=cursor)
        ids += [t.run_id for t in page.tasks]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert ids == ["eps-5", "gamma-3", "beta-2", "delta-4", "zeta-6", "alpha-1"]
    assert cursor is None


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !!",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b'[1, "failing", 0, 7, 0, "r"]').decode(),  # group 7
        base64.urlsafe_b64encode(b'[1, "failing", "x", 0, 0, "r"]').decode(),
        base64.urlsafe_b64encode(b'[9, "failing", 0, 0, 0, "r"]').decode(),
    ],
)
async def test_malformed_cursor_is_a_usage_error(fleet: Store, cursor: str) -> None:
    with pytest.raises(UsageError, match="cursor"):
        await fleet.list(TaskFilter(), cursor=cursor)


async def test_cursor_of_another_sort_and_bad_limit(fleet: Store) -> None:
    page = await fleet.list(TaskFilter(), sort=TaskSort.NEWEST, limit=2)
    assert page.next_cursor is not None
    with pytest.raises(UsageError, match="sort"):
        await fleet.list(TaskFilter(), sort=TaskSort.OLDEST, cursor=page.next_cursor)
    with pytest.raises(UsageError, match="limit"):
        await fleet.list(TaskFilter(), limit=0)


async def test_exact_page_size_has_no_empty_last_page(fleet: Store) -> None:
    page = await fleet.list(TaskFilter(), limit=6)
    assert len(page.tasks) == 6 and page.next_cursor is None


# ---------------------------------------------------------------- triage and status


ALL_TRIAGE = list(TriageState)


@pytest.mark.parametrize("start", ALL_TRIAGE)
@pytest.mark.parametrize("target", ALL_TRIAGE)
async def test_triage_transitions(
    store: Store, clock: Clock, start: TriageState, target: TriageState
) -> None:
    await store.apply_events([e(EventKind.STEP, "r", T0)])
    if start is not TriageState.NEW:
        await store.set_triage("r", start, by="first", note="n1")
    before = await got(store, "r")
    clock.now += S
    allowed = target in TRIAGE_TRANSITIONS[start]
    if target is start:
        task = await store.set_triage("r", target, by="second", note="n2")
        assert task == before  # no-op: who and when are kept
        assert await got(store, "r") == before
    elif allowed:
        task = await store.set_triage("r", target, by="second", note="n2")
        assert (task.triage, task.triage_by, task.triage_note, task.triage_at) == (
            target,
            "second",
            "n2",
            clock.now,
        )
        assert await got(store, "r") == task
    else:
        with pytest.raises(InvalidTransition, match=f"from {start.value} to {target.value}"):
            await store.set_triage("r", target, by="second")
        assert await got(store, "r") == before


async def test_triage_unknown_run_and_bad_state(store: Store) -> None:
    with pytest.raises(NotFound, match="nope"):
        await store.set_triage("nope", TriageState.ACKED, by="x")
    await store.apply_events([e(EventKind.STEP, "r", T0)])
    with pytest.raises(UsageError, match="triage state"):
        await store.set_triage("r", "snoozed", by="x")  # type: ignore[arg-type]


async def test_set_status(store: Store, clock: Clock) -> None:
    await store.apply_events(
        [
            e(EventKind.RUN_START, "r", T0),
            e(EventKind.RUN_START, "s", T0 - 1000 * S),  # stalled
            e(EventKind.RUN_END, "done", T0, status="failed"),
        ]
    )
    task = await store.set_status("r", "cancelled")
    assert (task.status, task.ended_at) == (RunStatus.CANCELLED, clock.now)
    assert await got(store, "r") == task
    assert (await store.set_status("r", "cancelled", at_ns=1)).ended_at == clock.now  # no-op
    with pytest.raises(InvalidTransition, match="from cancelled to failed"):
        await store.set_status("r", "failed")
    stalled = await store.set_status("s", "TIMEOUT", at_ns=T0 + 5)
    assert (stalled.status, stalled.ended_at) == (RunStatus.TIMEOUT, T0 + 5)
    with pytest.raises(InvalidTransition, match="from failed to running"):
        await store.set_status("done", "running")
    await store.apply_events([e(EventKind.RUN_START, "live", T0)])
    with pytest.raises(InvalidTransition):
        await store.set_status("live", "stalled")
    with pytest.raises(UsageError, match="unknown run status"):
        await store.set_status("live", "exploded")
    with pytest.raises(NotFound):
        await store.set_status("missing", "failed")


# ---------------------------------------------------------------- summaries


async def test_summaries(store: Store) -> None:
    assert await store.get_summary("r") is None
    old = Summary(
        run_id="r", text="first", model="extractive", offline=True, input_hash="h1", created_at=T0
    )
    new = Summary(
        run_id="r",
        text="second",
        model="gpt",
        offline=False,
        input_hash="h2",
        input_tokens=10,
        output_tokens=2,
        cost_usd=0.01,
        created_at=T0 + S,
        error="",
    )
    await store.save_summary(new)
    await store.save_summary(old)
    assert await store.get_summary("r") == new  # newest when no hash is given
    assert await store.get_summary("r", "h1") == old
    assert await store.get_summary("r", "h3") is None
    assert await store.get_summary("r", tenant="other") is None
    # Same key again replaces.
    redo = Summary(
        run_id="r",
        text="third",
        model="gpt",
        offline=False,
        input_hash="h2",
        created_at=T0 + 2 * S,
        error="rate limited",
    )
    await store.save_summary(redo)
    assert await store.get_summary("r", "h2") == redo


async def test_summary_without_created_at_uses_the_clock(store: Store, clock: Clock) -> None:
    await store.save_summary(Summary(run_id="r", text="t", model="m", offline=True))
    summary = await store.get_summary("r")
    assert summary is not None and summary.created_at == clock.now


# ---------------------------------------------------------------- details both stores share


async def test_run_ids_sort_byte_wise_and_ties_break_on_run_id(store: Store) -> None:
    ids = ["B", "a", "é", "Z", "_", "a b", "ab"]
    await store.apply_events([e(EventKind.RUN_START, run, T0) for run in ids])
    expected = sorted(ids, key=lambda s: s.encode())  # SQLite's BINARY collation
    assert await all_ids(store, TaskFilter(), TaskSort.OLDEST) == expected
    assert await all_ids(store, TaskFilter(), TaskSort.NEWEST) == expected[::-1]
    walked: list[str] = []
    cursor = None
    while True:
        page = await store.list(TaskFilter(), sort=TaskSort.OLDEST, limit=2, cursor=cursor)
        walked += [t.run_id for t in page.tasks]
        if (cursor := page.next_cursor) is None:
            break
    assert walked == expected


async def test_text_filter_folds_ascii_only(store: Store) -> None:
    await store.apply_events(
        [
            e(EventKind.RUN_START, "r1", T0, task="ÉCOLE Visit"),
            e(EventKind.RUN_START, "r2", T0, task="école visit"),
            e(EventKind.RUN_START, "r3", T0, task="100% done_ok"),
            e(EventKind.RUN_START, "r4", T0, task="C:\\Temp"),
            e(EventKind.ERROR, "r4", T0, error_message="a\x01b"),
        ]
    )

    async def match(text: str) -> set[str]:
        return set(await all_ids(store, TaskFilter(text=text), TaskSort.NEWEST))

    assert await match("VISIT") == {"r1", "r2"}
    assert await match("cole") == {"r1", "r2"}  # ASCII letters fold on both sides
    assert await match("école") == {"r2"}  # non-ASCII letters do not
    assert await match("ÉCOLE") == {"r1"}
    assert await match("%") == {"r3"}  # no wildcards: a plain substring
    assert await match("_") == {"r3"}
    assert await match("\\t") == {"r4"}  # a backslash is a plain character too
    assert await match("a\x01B") == {"r4"}  # even a control character, inside one field
    assert await match("p\x01r4") == set()  # never across two fields (task, run id)
    assert await match("done_ok") == {"r3"}
    assert await match("done%ok") == set()


async def test_values_are_data_never_sql(store: Store) -> None:
    nasty = "x'); DROP TABLE tasks; --"
    await store.apply_events([e(EventKind.RUN_START, nasty, T0, agent=nasty, task='"; --')])
    assert (await got(store, nasty)).agent == nasty
    assert await all_ids(store, TaskFilter(agents=(nasty,), text="drop"), TaskSort.NEWEST) == [
        nasty
    ]
    await store.set_triage(nasty, TriageState.ACKED, by=nasty, note=nasty)
    assert (await got(store, nasty)).triage_note == nasty


async def test_events_without_run_id_touch_nothing(store: Store) -> None:
    assert await store.apply_events([e(EventKind.STEP, "", T0)]) == 0
    assert await store.get("") is None
    assert await store.get("missing") is None
    assert sum((await store.counts(TaskFilter())).values()) == 0
    page = await store.list(TaskFilter())
    assert (page.tasks, page.next_cursor) == ([], None)


async def test_run_end_alone_and_time_filters_on_runs_without_a_start(store: Store) -> None:
    await store.apply_events([e(EventKind.RUN_END, "r", T0 + 5 * S, status="ok")])
    t = await got(store, "r")
    assert (t.status, t.started_at, t.ended_at, t.duration_ns) == (
        RunStatus.SUCCEEDED,
        T0 + 5 * S,
        T0 + 5 * S,
        0,
    )
    assert await all_ids(store, TaskFilter(since_ns=T0 + 5 * S), TaskSort.NEWEST) == ["r"]
    assert await all_ids(store, TaskFilter(until_ns=T0 + 5 * S), TaskSort.NEWEST) == []


async def test_health_is_ok(store: Store) -> None:
    health = await store.health()
    assert health.state is HealthState.OK
    assert health.kind in ("sqlite", "postgres")
    assert health.latency_ms is not None and health.latency_ms >= 0


# ---------------------------------------------------------------- both stores, same answers


def random_batches(seed: int, runs: int = 120, batches: int = 12) -> list[list[AgentEvent]]:
    """A messy fleet: events out of order, repeated run.starts and run.ends, status aliases,
    missing fields, several batches per run."""
    rng = random.Random(seed)
    kinds = list(EventKind)
    statuses = ["succeeded", "failed", "ok", "error", "Canceled", "timed_out", "", "weird"]
    out: list[list[AgentEvent]] = [[] for _ in range(batches)]
    for i in range(runs):
        run = rng.choice(["run", "Run", "r", "ω"]) + f"-{i % 97:03d}"
        base = T0 + rng.randrange(0, 3600) * S
        for _ in range(rng.randrange(1, 9)):
            kind = rng.choice(kinds)
            out[rng.randrange(batches)].append(
                e(
                    kind,
                    run,
                    base + rng.randrange(-30, 900) * S,
                    agent=rng.choice(["", "planner", "coder"]),
                    task=rng.choice(["", "fix", "Deploy app"]),
                    model=rng.choice(["", "m1", "m2"]),
                    status=rng.choice(statuses),
                    input_tokens=rng.randrange(0, 50),
                    output_tokens=rng.randrange(0, 5),
                    cost_usd=rng.choice([0.0, 0.1, 0.25]),
                    error_type=rng.choice(["", "ValueError"]),
                    error_message=rng.choice(["", "Bad GATEWAY", "x" * 600]),
                )
            )
    return out


@pytest.mark.postgres
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_sqlite_and_postgres_give_the_same_answers(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock, seed: int
) -> None:
    clock.now = T0 + 1200 * S
    lite_gen = make_store("sqlite", request, tmp_path, clock)
    pg_gen = make_store("postgres", request, tmp_path, clock)
    lite, pg = await anext(lite_gen), await anext(pg_gen)
    try:
        for batch in random_batches(seed):
            assert await lite.apply_events(batch, "t") == await pg.apply_events(batch, "t")
        rng = random.Random(seed)
        run_ids = [t.run_id for t in (await lite.list(TaskFilter(tenant="t"), limit=1000)).tasks]
        for run in rng.sample(run_ids, 15):
            state = rng.choice(list(TriageState))
            results = []
            for st in (lite, pg):
                try:
                    results.append(await st.set_triage(run, state, by="me", tenant="t"))
                except InvalidTransition as exc:
                    results.append(str(exc))
            assert results[0] == results[1]
        for run in rng.sample(run_ids, 15):
            status = rng.choice(["failed", "cancelled", "running"])
            results = []
            for st in (lite, pg):
                try:
                    results.append(await st.set_status(run, status, tenant="t"))
                except InvalidTransition as exc:
                    results.append(str(exc))
            assert results[0] == results[1]
        for i in range(6):  # summaries, some with equal created_at
            summary = Summary(
                run_id="r-1", text=f"s{i}", model=f"m{i % 2}", offline=False,
                input_hash=f"h{i % 3}", created_at=T0 + (i // 2) * S,
            )  # fmt: skip
            await lite.save_summary(summary, "t")
            await pg.save_summary(summary, "t")
        for h in (None, "h0", "h1", "h2", "h9"):
            assert await lite.get_summary("r-1", h, "t") == await pg.get_summary("r-1", h, "t")

        clock.now += 300 * S  # some runs stall
        filters = [
            TaskFilter(tenant="t"),
            TaskFilter(tenant="t", statuses=(RunStatus.STALLED, RunStatus.FAILED)),
            TaskFilter(tenant="t", statuses=(RunStatus.RUNNING,)),
            TaskFilter(tenant="t", agents=("coder",)),
            TaskFilter(tenant="t", triage=(TriageState.NEW, TriageState.IGNORED)),
            TaskFilter(tenant="t", text="gateway"),
            TaskFilter(tenant="t", text="RUN-0"),
            TaskFilter(tenant="t", since_ns=T0 + 600 * S, until_ns=T0 + 2400 * S),
            TaskFilter(tenant="t", run_ids=tuple(run_ids[:20])),
        ]
        for flt in filters:
            assert await lite.counts(flt) == await pg.counts(flt)
            for sort in TaskSort:
                cursors: list[str | None] = [None, None]
                while True:
                    pages = [
                        await st.list(flt, sort=sort, limit=7, cursor=c)
                        for st, c in zip((lite, pg), cursors, strict=True)
                    ]
                    assert pages[0].tasks == pages[1].tasks, (flt, sort)
                    assert pages[0].next_cursor == pages[1].next_cursor  # same cursor format
                    cursors = [p.next_cursor for p in pages]
                    if cursors[0] is None:
                        break
        for run in run_ids:
            assert await lite.get(run, "t") == await pg.get(run, "t")
    finally:
        await lite_gen.aclose()
        await pg_gen.aclose()
