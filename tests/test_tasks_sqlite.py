"""The SQLite TaskStore (backend.embedded.tasks) and its executor (backend.embedded.sqlite_exec)."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backend.embedded.sqlite_exec import SqliteExecutor
from backend.embedded.tasks import SCHEMA_VERSION, TRIAGE_TRANSITIONS, SqliteTaskStore
from backend.errors import InvalidTransition, NotFound, StorageError, UsageError
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

S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S
STALL_S = 600.0


class Clock:
    """An injectable clock (ns) the tests move by hand."""

    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + 60 * S)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteTaskStore]:
    st = SqliteTaskStore(tmp_path / "db" / "tasks.db", stall_after_s=STALL_S, clock=clock)
    await st.open()
    yield st
    await st.close()


def e(kind: EventKind, run: str, ts: int, **kw: object) -> AgentEvent:
    return AgentEvent(ts=ts, run_id=run, kind=kind, **kw)  # type: ignore[arg-type]


async def got(store: SqliteTaskStore, run_id: str, tenant: str = "fake") -> Task:
    task = await store.get(run_id, tenant)
    assert task is not None, run_id
    return task


async def all_ids(store: SqliteTaskStore, flt: TaskFilter, sort: TaskSort) -> list[str]:
    page = await store.list(flt, sort=sort, limit=10_000)
    assert page.next_cursor is None
    return [t.run_id for t in page.tasks]


# ---------------------------------------------------------------- folding


async def test_fold_a_whole_run(store: SqliteTaskStore) -> None:
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


async def test_counters_add_across_batches_and_runs_touched(store: SqliteTaskStore) -> None:
    batch = [
        e(EventKind.LLM_CALL, f"r{i % 3}", T0 + i, input_tokens=1, cost_usd=0.5) for i in range(9)
    ]
    assert await store.apply_events(batch) == 3
    assert await store.apply_events(batch) == 3
    t = await got(store, "r0")
    assert (t.step_count, t.input_tokens, t.cost_usd) == (6, 6, 3.0)
    assert await store.apply_events([]) == 0


async def test_new_run_defaults_and_error_without_end_stays_running(
    store: SqliteTaskStore,
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


async def test_started_at_is_earliest_event_until_a_run_start(store: SqliteTaskStore) -> None:
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


async def test_late_run_start_does_not_reopen_an_ended_run(store: SqliteTaskStore) -> None:
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


async def test_newest_run_end_wins_and_older_end_is_ignored(store: SqliteTaskStore) -> None:
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


async def test_last_error_follows_newest_error_by_event_time(store: SqliteTaskStore) -> None:
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


async def test_last_error_is_truncated(store: SqliteTaskStore) -> None:
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
    store: SqliteTaskStore, status: str, with_error: bool, expected: RunStatus
) -> None:
    if with_error:  # in an earlier batch, so the store (not the batch) must know about it
        await store.apply_events([e(EventKind.ERROR, "r", T0, error_message="x")])
    await store.apply_events([e(EventKind.RUN_END, "r", T0 + S, status=status)])
    assert (await got(store, "r")).status is expected


async def test_model_follows_newest_model_event(store: SqliteTaskStore) -> None:
    await store.apply_events([e(EventKind.LLM_CALL, "r", T0 + 5 * S, model="newer")])
    await store.apply_events([e(EventKind.RUN_START, "r", T0, model="older")])
    assert (await got(store, "r")).model == "newer"


async def test_tenants_are_separate(store: SqliteTaskStore) -> None:
    await store.apply_events([e(EventKind.STEP, "r", T0)], tenant="a")
    await store.apply_events([e(EventKind.STEP, "r", T0), e(EventKind.STEP, "r", T0)], tenant="b")
    assert (await got(store, "r", "a")).step_count == 1
    assert (await got(store, "r", "b")).step_count == 2
    assert await store.get("r") is None
    assert [t.run_id for t in (await store.list(TaskFilter(tenant="b"))).tasks] == ["r"]


async def test_folding_5k_events_is_fast(store: SqliteTaskStore) -> None:
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


async def test_stalled_is_derived_from_the_clock(store: SqliteTaskStore, clock: Clock) -> None:
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
async def fleet(store: SqliteTaskStore, clock: Clock) -> SqliteTaskStore:
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
async def test_filters(fleet: SqliteTaskStore, flt: TaskFilter, expected: set[str]) -> None:
    for sort in TaskSort:
        assert set(await all_ids(fleet, flt, sort)) == expected
    counts = await fleet.counts(flt)
    assert sum(counts.values()) == len(expected)
    assert set(counts) == {s.value for s in RunStatus}


async def test_counts_per_status(fleet: SqliteTaskStore) -> None:
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


async def test_sort_orders(fleet: SqliteTaskStore) -> None:
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
    store: SqliteTaskStore, clock: Clock, sort: TaskSort
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


async def test_failing_first_pages_cross_the_group_boundary(fleet: SqliteTaskStore) -> None:
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
async def test_malformed_cursor_is_a_usage_error(fleet: SqliteTaskStore, cursor: str) -> None:
    with pytest.raises(UsageError, match="cursor"):
        await fleet.list(TaskFilter(), cursor=cursor)


async def test_cursor_of_another_sort_and_bad_limit(fleet: SqliteTaskStore) -> None:
    page = await fleet.list(TaskFilter(), sort=TaskSort.NEWEST, limit=2)
    assert page.next_cursor is not None
    with pytest.raises(UsageError, match="sort"):
        await fleet.list(TaskFilter(), sort=TaskSort.OLDEST, cursor=page.next_cursor)
    with pytest.raises(UsageError, match="limit"):
        await fleet.list(TaskFilter(), limit=0)


async def test_exact_page_size_has_no_empty_last_page(fleet: SqliteTaskStore) -> None:
    page = await fleet.list(TaskFilter(), limit=6)
    assert len(page.tasks) == 6 and page.next_cursor is None


# ---------------------------------------------------------------- triage and status


ALL_TRIAGE = list(TriageState)


@pytest.mark.parametrize("start", ALL_TRIAGE)
@pytest.mark.parametrize("target", ALL_TRIAGE)
async def test_triage_transitions(
    store: SqliteTaskStore, clock: Clock, start: TriageState, target: TriageState
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


def test_triage_table_matches_the_rules() -> None:
    new, acked, resolved, ignored = TriageState
    expected = {
        new: {acked, resolved, ignored},
        acked: {resolved, ignored, new},
        resolved: {new, acked},
        ignored: {new},
    }
    assert expected == TRIAGE_TRANSITIONS


async def test_triage_unknown_run_and_bad_state(store: SqliteTaskStore) -> None:
    with pytest.raises(NotFound, match="nope"):
        await store.set_triage("nope", TriageState.ACKED, by="x")
    await store.apply_events([e(EventKind.STEP, "r", T0)])
    with pytest.raises(UsageError, match="triage state"):
        await store.set_triage("r", "snoozed", by="x")  # type: ignore[arg-type]


async def test_set_status(store: SqliteTaskStore, clock: Clock) -> None:
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


async def test_summaries(store: SqliteTaskStore) -> None:
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


async def test_summary_without_created_at_uses_the_clock(
    store: SqliteTaskStore, clock: Clock
) -> None:
    await store.save_summary(Summary(run_id="r", text="t", model="m", offline=True))
    summary = await store.get_summary("r")
    assert summary is not None and summary.created_at == clock.now


# ---------------------------------------------------------------- storage


async def test_schema_version_and_health(store: SqliteTaskStore) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    health = await store.health()
    assert (health.kind, health.state, health.detail) == ("sqlite", HealthState.OK, str(store.path))
    await store.open()  # idempotent


async def test_reopen_keeps_data_and_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    first = SqliteTaskStore(path)
    await first.apply_events([e(EventKind.STEP, "r", T0)])  # opens on first use
    await first.close()
    second = SqliteTaskStore(path)
    assert (await got(second, "r")).step_count == 1
    await second.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    third = SqliteTaskStore(path)
    with pytest.raises(StorageError, match="newer"):
        await third.open()
    await third.close()


async def test_locked_database_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteTaskStore(path, busy_timeout_ms=50)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StorageError, match="locked") as info:
            await store.apply_events([e(EventKind.STEP, "r", T0)])
        assert str(path) in str(info.value)
        assert "close other agentlog" in str(info.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await store.apply_events([e(EventKind.STEP, "r", T0)]) == 1  # recovers
    await store.close()


async def test_corrupt_database_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all " * 200)
    store = SqliteTaskStore(path)
    with pytest.raises(StorageError, match="not a usable SQLite database") as info:
        await store.open()
    assert str(path) in str(info.value)
    health = await store.health()
    assert health.state is HealthState.DOWN and str(path) in health.reason
    await store.close()


async def test_unopenable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    store = SqliteTaskStore(blocker / "sub" / "tasks.db")
    with pytest.raises(StorageError, match="cannot be opened") as info:
        await store.open()
    assert str(blocker) in str(info.value)
    await store.close()


# ---------------------------------------------------------------- the executor


async def test_executor_rolls_back_and_passes_errors_through(tmp_path: Path) -> None:
    db = SqliteExecutor(tmp_path / "x" / "e.db", init_sql="CREATE TABLE t (k TEXT PRIMARY KEY);")
    await db.write(lambda c: c.execute("INSERT INTO t VALUES ('a')"))

    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('b')")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await db.write(fail)
    with pytest.raises(sqlite3.IntegrityError):  # a bug in the caller's data, not the file
        await db.write(lambda c: c.execute("INSERT INTO t VALUES ('a')"))
    rows = await db.read(lambda c: c.execute("SELECT k FROM t").fetchall())
    assert rows == [("a",)]
    with pytest.raises(StorageError):  # readers are query-only
        await db.read(lambda c: c.execute("INSERT INTO t VALUES ('z')"))
    await db.close()
    await db.close()
    with pytest.raises(StorageError, match="closed"):
        await db.read(lambda c: None)


async def test_executor_work_does_not_block_the_loop_and_readers_run_beside_writer(
    tmp_path: Path,
) -> None:
    db = SqliteExecutor(tmp_path / "e.db", init_sql="CREATE TABLE t (v INTEGER);", readers=2)
    await db.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    def slow_write(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (2)")
        time.sleep(0.3)

    tick_task = asyncio.create_task(ticker())
    write = asyncio.create_task(db.write(slow_write))
    await asyncio.sleep(0.05)  # the write transaction is open now
    started = time.perf_counter()
    during = await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
    read_s = time.perf_counter() - started
    await write
    tick_task.cancel()
    assert during == 1  # WAL: the reader sees the last commit, without waiting for the writer
    assert read_s < 0.2
    assert ticks >= 20  # the loop kept running while the write slept in its thread
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
    await db.close()


def test_executor_refuses_memory_database() -> None:
    with pytest.raises(ValueError, match="memory"):
        SqliteExecutor(Path(":memory:"))
