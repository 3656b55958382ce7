"""The dashboard: Tasks, Live tail, Failure patterns and Summary.

Wide terminals show the four panes in a grid; narrow ones (80x24) show one pane at a time with a
tab strip (keys 1-4, tab, or a click switch). Workers call the backend and post messages; the
handlers here change the widgets, and drop results that belong to an older filter, time range
or selection (a generation number travels with every request).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, ClassVar, cast

from textual import events, on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Container
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Input

from backend.facade import Backend
from backend.models import Pattern, PatternKind, Task, TaskFilter, TaskSort, TriageState

from .. import fmt
from ..bindings import bindings_for
from ..loglines import LineMaker
from ..messages import (
    ComponentFailed,
    ComponentRecovered,
    CountsLoaded,
    PatternsLoaded,
    TasksLoaded,
)
from ..status import describe
from ..task_query import TaskQuery
from ..widgets.banner import Banner
from ..widgets.line_view import LineView
from ..widgets.pane_tabs import PANES, PaneTabs
from ..widgets.pattern_table import SIGNAL_KINDS, PatternTable
from ..widgets.patterns_pane import PatternsPane
from ..widgets.search_bar import SearchBar
from ..widgets.status_header import StatusHeader
from ..widgets.summary_pane import SummaryPane
from ..widgets.tail_pane import TailPane
from ..widgets.task_table import TaskTable
from ..widgets.tasks_pane import TasksPane
from .agent_picker import AgentPickerScreen

if TYPE_CHECKING:
    from ..app import AgentlogApp

__all__ = ["DashboardScreen"]

log = logging.getLogger("agentlog.tui")

PAGE = 50  # runs per page
MAX_ROWS = 2000  # a refresh re-reads at most this many loaded rows
TAIL_BACKFILL = 500  # lines the tail replays from the time range when it starts
TAIL_FLUSH_S = 0.1  # the tail's steady frame rate: 10 Hz
INLINE_LINES = 200  # bigger tail batches are turned into display lines off the UI loop
PATTERNS_EVERY_S = 10.0
COUNTS_EVERY_S = 2.0  # a periodic refresh re-counts the runs by status this often
COUNTS_SETTLE_S = 0.25  # after a filter change, count once the typing pauses this long
WIDE_MIN = (110, 30)  # columns, rows from which the four panes share the screen
PANE_ORDER = tuple(key for key, _ in PANES)


def _quote(value: str) -> str:
    """A LogQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DashboardScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [*bindings_for("dashboard")]

    active_pane: reactive[str] = reactive("tasks")
    narrow: reactive[bool] = reactive(True)

    def __init__(self) -> None:
        super().__init__(id="dashboard")
        self.query_state = TaskQuery()
        self.started = False
        self.mounted = False
        self._start_tail = True
        self.loaded = asyncio.Event()  # first runs, patterns and tail lines are on screen
        self._got = {"tasks": False, "patterns": False, "tail": False}
        self._gen = 0
        self._shown_gen = -1
        self._inflight_gen = -1
        self._counts: dict[str, int] = {}
        self._counts_for: object = None
        self._counts_at = 0.0
        self._refresh_cost = 0.0
        self._last_refresh = 0.0
        self._patterns_at = 0.0
        self._patterns_cost = 0.0
        self._more_gen = -1
        self._next_cursor: str | None = None
        self._selected: str | None = None
        self._pattern_gen = 0
        self._seen_patterns: set[str] | None = None
        self._patterns_inflight = False
        self._tail_task: Task | None = None
        self._tail_gen = 0
        self._refresh_timers: list[Timer] = []

    @property
    def agentlog(self) -> AgentlogApp:
        return cast("AgentlogApp", self.app)

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield StatusHeader(id="header")
        yield Banner(id="degraded-banner", classes="banner")
        yield Banner(id="alert-banner", classes="banner")
        yield PaneTabs(id="pane-tabs")
        with Container(id="panes"):
            yield TasksPane(id="tasks", classes="pane")
            yield PatternsPane(id="patterns", classes="pane")
            yield TailPane(id="tail", classes="pane")
            yield SummaryPane(id="summary")
        yield Footer()

    def on_mount(self) -> None:
        for banner in self.query(Banner):
            banner.display = False
        self.query_one(SummaryPane).add_class("pane")
        self._relayout(self.app.size.width, self.app.size.height)
        self.watch_active_pane("tasks")
        self.tasks_pane.table.focus()
        self.agentlog.refresh_header(self.header)
        self.mounted = True
        self.agentlog.status_changed()
        self.agentlog.dashboard_ready()

    def on_resize(self, event: events.Resize) -> None:
        self._relayout(event.size.width, event.size.height)

    def _relayout(self, width: int, height: int) -> None:
        self.narrow = width < WIDE_MIN[0] or height < WIDE_MIN[1]

    def watch_narrow(self, narrow: bool) -> None:
        self.set_class(narrow, "-narrow")
        self.set_class(not narrow, "-wide")

    def watch_active_pane(self, pane: str) -> None:
        for key in PANE_ORDER:
            self.query_one(f"#{key}").set_class(key == pane, "-active")
        tabs = self.query_one(PaneTabs)
        tabs.active = pane
        tabs.marks = tabs.marks - {pane}

    @property
    def header(self) -> StatusHeader:
        return self.query_one(StatusHeader)

    @property
    def tasks_pane(self) -> TasksPane:
        return self.query_one(TasksPane)

    @property
    def table(self) -> TaskTable:
        return self.query_one(TaskTable)

    @property
    def tail(self) -> TailPane:
        return self.query_one(TailPane)

    @property
    def summary(self) -> SummaryPane:
        return self.query_one(SummaryPane)

    @property
    def patterns(self) -> PatternsPane:
        return self.query_one(PatternsPane)

    def _pane_focus_target(self, pane: str) -> Widget:
        if pane == "tasks":
            return self.table
        if pane == "tail":
            return self.tail.view
        if pane == "patterns":
            return self.patterns.table
        return self.summary

    def _pane_of(self, widget: Widget | None) -> str | None:
        node = widget
        while node is not None and node is not self:
            if node.id in PANE_ORDER:
                return node.id
            node = cast("Widget | None", node.parent)
        return None

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        pane = self._pane_of(event.widget)
        if pane is not None:
            self.active_pane = pane

    def action_focus_pane(self, pane: str) -> None:
        self.active_pane = pane
        self._pane_focus_target(pane).focus()

    def action_next_pane(self) -> None:
        i = PANE_ORDER.index(self.active_pane)
        self.action_focus_pane(PANE_ORDER[(i + 1) % len(PANE_ORDER)])

    def action_previous_pane(self) -> None:
        i = PANE_ORDER.index(self.active_pane)
        self.action_focus_pane(PANE_ORDER[(i - 1) % len(PANE_ORDER)])

    @on(PaneTabs.Picked)
    def _tab_clicked(self, event: PaneTabs.Picked) -> None:
        self.action_focus_pane(event.pane)

    def _mark(self, pane: str) -> None:
        """Flag a pane with news in the tab strip (narrow layout)."""
        if self.narrow and pane != self.active_pane and self.loaded.is_set():
            tabs = self.query_one(PaneTabs)
            tabs.marks = tabs.marks | {pane}

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, tail: bool = True) -> None:
        """The backend is open: start the timers and the first loads."""
        if self.started:
            return
        self.started = True
        hz = self.agentlog.settings.tui.refresh_hz
        self._refresh_timers = [
            self.set_interval(1 / hz, self._tick, name="tasks-refresh"),
            self.set_interval(TAIL_FLUSH_S, self._flush_tail, name="tail-flush"),
            self.set_interval(PATTERNS_EVERY_S, self._patterns_tick, name="patterns"),
        ]
        self._start_tail = tail
        self.refresh_tasks()  # the rest waits for the first rows: they come first

    def on_screen_suspend(self, _event: events.ScreenSuspend) -> None:
        """A screen (modal or detail) hides the panes: stop refreshing them. The tail keeps
        receiving into its bounded queue."""
        for t in self._refresh_timers:
            t.pause()

    def on_screen_resume(self, _event: events.ScreenResume) -> None:
        for t in self._refresh_timers:
            t.resume()
        if self.started:
            self.refresh_tasks(force=True)

    def _tick(self) -> None:
        app = self.agentlog
        self.header.clock = fmt.clock_time(app.now())
        self.refresh_tasks()

    def _flush_tail(self) -> None:
        shown = self.tail.flush()
        if shown:
            self._mark("tail")
            if not self._got["tail"]:
                self._loaded("tail")

    def _loaded(self, what: str) -> None:
        self._got[what] = True
        if all(self._got.values()):
            self.loaded.set()

    # ------------------------------------------------------------------ tasks

    def _filter(self) -> TaskFilter:
        start, _ = self.agentlog.time_range.window(self.agentlog.now())
        return self.query_state.to_filter(start)

    def _empty_reason(self) -> str:
        rng = self.agentlog.time_range.label
        if self.query_state.active:
            return f"No runs match these filters in the last {rng}. x clears them."
        return f"No runs in the last {rng}. t picks a longer time range."

    def refresh_tasks(self, *, force: bool = False) -> None:
        backend = self.agentlog.backend
        if backend is None:
            return
        if not force:
            if self._inflight_gen == self._gen:
                return
            # at most ~25% of the time spent refreshing: slow stores get fewer refreshes
            if time.monotonic() - self._last_refresh < self._refresh_cost * 3:
                return
        self._last_refresh = time.monotonic()
        self._inflight_gen = self._gen
        limit = min(MAX_ROWS, max(PAGE, len(self.table.keys)))
        self.run_worker(
            self._fetch_tasks(backend, self._gen, self._filter(), limit, None),
            group="tasks",
            exit_on_error=False,
        )

    async def _fetch_tasks(
        self, backend: Backend, gen: int, flt: TaskFilter, limit: int, cursor: str | None
    ) -> None:
        append = cursor is not None
        started = time.monotonic()
        # The counts (the pane's title) change slowly: a periodic refresh reuses them for a
        # while; a new filter or time range asks for them right after its rows.
        key = self._counts_key()
        want_counts = not append and (
            key != self._counts_for or started - self._counts_at >= COUNTS_EVERY_S
        )
        busy = 0.0  # time spent in the store (not waiting for the typing to pause)
        try:
            t = time.monotonic()
            page = await backend.list_tasks(
                flt, sort=self.query_state.sort, limit=limit, cursor=cursor
            )
            busy += time.monotonic() - t
            # the rows first (they are what the user waits for), the counts after
            self.post_message(TasksLoaded(gen, page, self._counts, append))
            if want_counts and key != self._counts_for:
                # a new filter: typing goes on, so count only once it pauses
                await asyncio.sleep(COUNTS_SETTLE_S)
            if want_counts and gen == self._gen:
                t = time.monotonic()
                counts = await backend.task_counts(flt)
                busy += time.monotonic() - t
                self.post_message(CountsLoaded(gen, key, counts, started))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("listing runs failed", exc_info=True)
            self.post_message(ComponentFailed("tasks", describe(exc)))
            return
        finally:
            self._tasks_done(gen, append, busy)
        self.post_message(ComponentRecovered("tasks"))

    def _tasks_done(self, gen: int, append: bool, busy: float) -> None:
        if append:
            self._more_gen = -1
        elif self._inflight_gen == gen:
            self._inflight_gen = -1
        # keep the store's load bounded: a slow refresh makes the next ones wait longer
        self._refresh_cost = busy

    @on(CountsLoaded)
    def _counts_loaded(self, message: CountsLoaded) -> None:
        if message.generation != self._gen:
            return
        self._counts, self._counts_for, self._counts_at = (
            message.counts,
            message.key,
            message.at,
        )
        table = self.table
        self.tasks_pane.show_counts(message.counts, len(table.keys), table.has_more)

    @on(TasksLoaded)
    def _tasks_loaded(self, message: TasksLoaded) -> None:
        if message.generation != self._gen:
            return  # an answer to an older filter or time range
        table = self.table
        if message.append:
            known = set(table.keys)
            tasks = [table.tasks[k] for k in table.keys]
            tasks += [t for t in message.page.tasks if t.run_id not in known]
        else:
            tasks = message.page.tasks
        self._next_cursor = message.page.next_cursor
        self._shown_gen = message.generation
        more = message.page.next_cursor is not None
        self.tasks_pane.show_tasks(
            tasks, self.agentlog.now(), has_more=more, empty_reason=self._empty_reason()
        )
        self.tasks_pane.show_counts(message.counts, len(tasks), more)
        self._selection_maybe_changed()
        if not self._got["tasks"]:
            self._loaded("tasks")
            self.refresh_patterns()
            if self._start_tail:
                self.restart_tail()

    @on(TaskTable.LoadMore)
    def _load_more(self, event: TaskTable.LoadMore) -> None:
        event.stop()
        backend = self.agentlog.backend
        if backend is None or self._next_cursor is None or self._more_gen == self._gen:
            return
        self._more_gen = self._gen
        self.run_worker(
            self._fetch_tasks(backend, self._gen, self._filter(), PAGE, self._next_cursor),
            group="tasks-more",
            exit_on_error=False,
        )

    def _counts_key(self) -> object:
        """What the counts depend on: the filters and the time range (not the sort)."""
        q = dataclasses.replace(self.query_state, sort=TaskSort.FAILING_FIRST)
        return (q, self.agentlog.time_range)

    @property
    def tasks_settled(self) -> bool:
        """The runs on screen answer the current filter and time range (nothing in flight)."""
        return self._shown_gen == self._gen and self._inflight_gen != self._gen

    def set_query(self, query: TaskQuery) -> None:
        self.query_state = query
        self._gen += 1
        self._next_cursor = None
        self.tasks_pane.show_query(query, self.agentlog.time_range.label)
        self.refresh_tasks(force=True)

    @on(DataTable.RowHighlighted, "#tasks-table")
    def _row_moved(self, _event: DataTable.RowHighlighted) -> None:
        self._selection_maybe_changed()

    def _selection_maybe_changed(self) -> None:
        rid = self.table.selected_run_id
        if rid == self._selected:
            return
        self._selected = rid
        summary = self.summary
        if summary.streaming and summary.run_id != rid:
            summary.cancel_stream(self.table.selected_task)

    @property
    def selected_task(self) -> Task | None:
        return self.table.selected_task

    def _need_task(self) -> Task | None:
        task = self.selected_task
        if task is None:
            self.app.notify("No run selected.", severity="warning", markup=False)
        return task

    @on(TaskTable.Activated)
    def _open(self, event: TaskTable.Activated) -> None:
        event.stop()
        self.agentlog.open_run(event.task, first_error=event.first_error)

    # filter and quick filters (bound in the Tasks pane)

    def action_filter(self) -> None:
        self.tasks_pane.filter_bar.open(self.query_state.text)

    @on(Input.Changed, "#tasks-filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        event.stop()
        self.set_query(dataclasses.replace(self.query_state, text=event.value.strip()))

    @on(Input.Submitted, "#tasks-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.tasks_pane.filter_bar.keep_and_close()

    @on(SearchBar.Closed, "#tasks-filter")
    def _filter_closed(self, event: SearchBar.Closed) -> None:
        event.stop()
        if event.cleared and self.query_state.text:
            self.set_query(dataclasses.replace(self.query_state, text=""))
        self.table.focus()

    def action_toggle_failed(self) -> None:
        q = self.query_state
        self.set_query(dataclasses.replace(q, failing_only=not q.failing_only))

    def action_toggle_mine(self) -> None:
        q = self.query_state
        self.set_query(dataclasses.replace(q, mine=not q.mine))

    def action_cycle_sort(self) -> None:
        self.set_query(self.query_state.next_sort())

    def action_clear_filters(self) -> None:
        self.set_query(TaskQuery(sort=self.query_state.sort))

    def action_pick_agent(self) -> None:
        self.run_worker(self._pick_agent(), group="agents", exclusive=True, exit_on_error=False)

    async def _pick_agent(self) -> None:
        backend = self.agentlog.backend
        if backend is None:
            return
        start, end = self.agentlog.time_range.window(self.agentlog.now())
        label = self.agentlog.settings.fields.agent
        try:
            agents = await backend.label_values(label, start, end)
        except Exception as exc:
            self.app.notify(f"cannot list agents: {describe(exc)}", severity="error", markup=False)
            return

        def chosen(agent: str | None) -> None:
            if agent is not None:
                self.set_query(dataclasses.replace(self.query_state, agent=agent))

        self.app.push_screen(AgentPickerScreen(sorted(agents), self.query_state.agent), chosen)

    # ------------------------------------------------------------------ summary

    def action_summarize(self, refresh: bool = False) -> None:
        task = self._need_task()
        backend = self.agentlog.backend
        if task is None or backend is None:
            return
        self.summary.summarize(backend, task, refresh=refresh)
        if self.narrow:
            self.action_focus_pane("summary")

    # ------------------------------------------------------------------ triage

    def action_triage(self, state: str) -> None:
        task = self._need_task()
        if task is not None:
            self.agentlog.triage(task, TriageState(state))

    def action_undo_triage(self) -> None:
        self.agentlog.undo_triage()

    def task_changed(self, task: Task) -> None:
        """A run changed through this app (triage): show it now, then re-read the list."""
        self.table.replace_task(task)
        self.refresh_tasks(force=True)

    # ------------------------------------------------------------------ tail

    def _tail_query(self) -> str:
        backend = self.agentlog.backend
        f = self.agentlog.settings.fields
        task = self._tail_task
        if task is None or backend is None:
            return "{" + f'{f.agent}=~".+"' + "}"
        return f"{backend.run_selector(task)} | {f.run_id}={_quote(task.run_id)}"

    def restart_tail(self) -> None:
        backend = self.agentlog.backend
        if backend is None:
            return
        task = self._tail_task
        scope = "all runs" if task is None else f"run {fmt.short_id(task.run_id)}"
        self.tail.reset(scope)
        self._tail_gen += 1
        start, _ = self.agentlog.time_range.window(self.agentlog.now())
        f = self.agentlog.settings.fields
        maker = LineMaker(
            agent_label=f.agent,
            level_label=f.level,
            run_id_field=f.run_id,
            event_field=f.event,
            task_field=f.task,
            show_agent=task is None,
        )
        self.run_worker(
            self._tail(backend, self._tail_gen, self._tail_query(), start, maker),
            group="tail",
            exclusive=True,
            exit_on_error=False,
        )

    async def _tail(
        self, backend: Backend, gen: int, query: str, start_ns: int, maker: LineMaker
    ) -> None:
        """Follow the tail; on a failure, report it and reconnect from the last line seen."""
        delay = 1.0
        limit = TAIL_BACKFILL
        while gen == self._tail_gen:
            try:
                async for batch in backend.tail(query, start_ns, limit=limit):
                    if gen != self._tail_gen:
                        return
                    if batch.dropped:
                        span = ""
                        if batch.dropped_from is not None and batch.dropped_to is not None:
                            span = (
                                f" between {fmt.clock_time(batch.dropped_from)} and "
                                f"{fmt.clock_time(batch.dropped_to)}"
                            )
                        self.tail.note_dropped(
                            batch.dropped,
                            f"⚠ {batch.dropped:,} lines dropped by the tail{span}: it fell "
                            "behind (they are in the store)",
                        )
                    if batch.entries:
                        entries = batch.entries
                        if len(entries) > INLINE_LINES:  # keep the UI loop free for keys
                            lines = await asyncio.to_thread(maker.make_all, entries)
                        else:
                            lines = maker.make_all(entries)
                        if gen != self._tail_gen:
                            return
                        self.tail.enqueue(lines)
                        start_ns = batch.entries[-1].entry.ts + 1
                    if delay > 1.0 or self.agentlog.status.failures.get("tail"):
                        delay = 1.0
                        self.post_message(ComponentRecovered("tail"))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("tail failed", exc_info=True)
                self.post_message(ComponentFailed("tail", describe(exc)))
                limit = 5000  # catch up on what was missed while disconnected
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def action_toggle_follow(self) -> None:
        self.tail.toggle_following()

    def action_narrow_tail(self) -> None:
        task = self._need_task()
        if task is None:
            return
        self._tail_task = task
        self.restart_tail()
        if self.narrow:
            self.action_focus_pane("tail")

    def action_widen_tail(self) -> None:
        if self._tail_task is None:
            self.app.notify("The tail already follows all runs.", markup=False)
            return
        self._tail_task = None
        self.restart_tail()

    @on(LineView.Notice)
    def _line_notice(self, event: LineView.Notice) -> None:
        event.stop()
        self.app.notify(event.text, markup=False, timeout=3)

    # ------------------------------------------------------------------ patterns

    def _patterns_tick(self) -> None:
        # mining a big window is heavy: never spend more than ~10% of the time on it
        wait = max(PATTERNS_EVERY_S, 10 * self._patterns_cost)
        if time.monotonic() - self._patterns_at >= wait:
            self.refresh_patterns()

    def refresh_patterns(self) -> None:
        backend = self.agentlog.backend
        if backend is None or self._patterns_inflight:
            return
        if not hasattr(backend, "failure_patterns"):
            self.patterns.unavailable("Failure patterns need a newer backend.")
            self._loaded("patterns")
            return
        self._patterns_inflight = True
        start, end = self.agentlog.time_range.window(self.agentlog.now())
        self.run_worker(
            self._fetch_patterns(backend, self._pattern_gen, start, end),
            group="patterns",
            exit_on_error=False,
        )

    async def _fetch_patterns(self, backend: Backend, gen: int, start: int, end: int) -> None:
        self._patterns_at = time.monotonic()
        try:
            report = await backend.failure_patterns(start, end)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("failure patterns failed", exc_info=True)
            self.post_message(ComponentFailed("patterns", describe(exc)))
            return
        finally:
            self._patterns_inflight = False
            self._patterns_cost = time.monotonic() - self._patterns_at
        self.post_message(ComponentRecovered("patterns"))
        self.post_message(PatternsLoaded(gen, report))

    @on(PatternsLoaded)
    def _patterns_loaded(self, message: PatternsLoaded) -> None:
        if message.generation != self._pattern_gen:
            return
        report = message.report
        self.patterns.show_report(report, self.agentlog.time_range.label)
        alerting = [p for p in report.patterns if _alerts(p)]
        if self._seen_patterns is None:  # the first report is the baseline
            self._seen_patterns = {p.id for p in alerting}
        else:
            fresh = [p for p in alerting if p.id not in self._seen_patterns]
            self._seen_patterns.update(p.id for p in fresh)
            if fresh:
                self._alert(fresh)
        if not self._got["patterns"]:
            self._loaded("patterns")

    def _alert(self, fresh: list[Pattern]) -> None:
        settings = self.agentlog.settings.tui
        self._mark("patterns")
        top = fresh[0]
        what = "New failure pattern" if top.kind == PatternKind.ERROR else "Agent failure signal"
        more = f" (+{len(fresh) - 1} more)" if len(fresh) > 1 else ""
        msg = (
            f"{what}: {top.template} · {top.run_count} runs · "
            f"{fmt.clock_time(self.agentlog.now())}{more}"
        )
        if settings.banner:
            self.query_one("#alert-banner", Banner).say(msg, "3 shows it · esc dismisses")
        if settings.bell:
            self.agentlog.ring_bell()

    @on(PatternTable.Chosen)
    def _pattern_chosen(self, event: PatternTable.Chosen) -> None:
        event.stop()
        p = event.pattern
        label = f"#{event.rank} {p.template[:40]}"
        if p.run_count > len(p.run_ids):
            label += f" ({len(p.run_ids)} of {p.run_count} runs)"
        self.set_query(
            dataclasses.replace(self.query_state, run_ids=tuple(p.run_ids), pattern_label=label)
        )
        self.action_focus_pane("tasks")
        self.table.move_cursor(row=0, animate=False)

    def action_dismiss_banner(self) -> None:
        self.query_one("#alert-banner", Banner).hide()

    # ------------------------------------------------------------------ time range and health

    def action_pick_range(self) -> None:
        self.agentlog.pick_time_range()

    def range_changed(self) -> None:
        label = self.agentlog.time_range.label
        self.header.range_label = label
        self.tasks_pane.show_query(self.query_state, label)
        self._gen += 1
        self._pattern_gen += 1
        self._seen_patterns = None
        self._patterns_inflight = False
        self.refresh_tasks(force=True)
        self.refresh_patterns()
        self.restart_tail()

    def show_status(self, reasons: list[str], last_good_ns: int | None) -> None:
        banner = self.query_one("#degraded-banner", Banner)
        if not reasons:
            banner.hide()
            return
        when = f" · showing data from {fmt.clock_time(last_good_ns)}" if last_good_ns else ""
        banner.say(
            f"▲ source degraded: {'; '.join(reasons)}{when}",
            "retrying by itself",
        )


def _alerts(p: Pattern) -> bool:
    """A pattern worth a banner: a new error template, or an agent failure signal."""
    return (p.kind == PatternKind.ERROR and p.new) or p.kind in SIGNAL_KINDS
