"""One run: its facts, its whole log (virtualized: fast on 100k+ lines), its summary and its
failure patterns. `escape` returns to the dashboard exactly as it was (the dashboard stays
underneath, untouched)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from backend.facade import Backend
from backend.models import PatternReport, TailEntry, Task, TriageState

from .. import fmt
from ..bindings import bindings_for
from ..loglines import LineMaker, LogLine
from ..sanitize import sanitize
from ..status import describe
from ..widgets.line_view import LineView
from ..widgets.search_bar import SearchBar
from ..widgets.summary_pane import SummaryPane

if TYPE_CHECKING:
    from ..app import AgentlogApp

__all__ = ["RunDetailScreen"]

log = logging.getLogger("agentlog.tui")

RUN_LOG_LIMIT = 100_000  # one page: the store's cap on one query
RUN_LOG_MAX = 2_000_000  # lines of one run kept in memory at most (the view draws only what shows)


def _entry_key(te: TailEntry) -> tuple[int, str, str]:
    return (te.entry.ts, te.entry.line, repr(sorted(te.labels.items())))


def facts_text(task: Task, now_ns: int) -> Text:
    t = Text()
    t.append_text(fmt.status_label(task.status))
    t.append(f"  {sanitize(task.run_id)}", style="bold")
    t.append(f"  {sanitize(task.agent)}")
    if task.task:
        t.append(f" · {sanitize(task.task)}")
    t.append("\n")
    t.append(f"started {fmt.timestamp(task.started_at)}", style="bright_black")
    t.append(f" ({fmt.ago(task.started_at, now_ns)} ago)", style="bright_black")
    t.append(f" · duration {fmt.duration(fmt.live_duration(task, now_ns))}")
    t.append(f" · steps {task.step_count} · ")
    t.append(f"errors {task.error_count}", style="red" if task.error_count else "")
    t.append("\n")
    t.append(f"model {sanitize(task.model) or '–'}")
    t.append(f" · tokens {fmt.tokens(task.input_tokens)}→{fmt.tokens(task.output_tokens)}")
    t.append(f" · cost {fmt.cost(task.cost_usd)} · triage ")
    t.append_text(fmt.triage_text(task.triage))
    if task.triage_by:
        t.append(f" by {sanitize(task.triage_by)}")
    if task.triage_note:
        t.append(f": {sanitize(task.triage_note)}", style="italic")
    if task.last_error:
        t.append("\n")
        t.append("last error ", style="bright_black")
        t.append(sanitize(task.last_error), style="red")
    return t


def patterns_text(report: PatternReport) -> Text:
    t = Text()
    if not report.patterns:
        t.append("no error patterns in this run", style="bright_black")
        return t
    for p in report.patterns[:8]:
        t.append(f"{p.count:>4}× ", style="bold")
        t.append(f"{p.kind.value:<6} ", style="magenta" if p.kind.value != "error" else "red")
        t.append(sanitize(p.template) + "\n")
    return t


class RunDetailScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [*bindings_for("detail")]

    def __init__(self, task: Task, *, first_error: bool = False) -> None:
        super().__init__()
        self.run_info = task
        self.first_error = first_error
        self.loaded = asyncio.Event()

    @property
    def agentlog(self) -> AgentlogApp:
        return cast("AgentlogApp", self.app)

    def compose(self) -> ComposeResult:
        yield Static(id="detail-facts")
        with Horizontal(id="detail-body"):
            with Vertical(id="detail-main"):
                yield LineView(None, id="detail-log")
                bar = SearchBar(placeholder="search this run's log", id="detail-search")
                bar.display = False
                yield bar
            with Vertical(id="detail-side"):
                yield SummaryPane(title="Summary", id="detail-summary")
                yield Static(Text("patterns: loading…", style="bright_black"), id="detail-patterns")
        yield Footer()

    def on_mount(self) -> None:
        self.set_class(self.app.size.width < 110, "-narrow")
        self.show_task(self.run_info)
        view = self.query_one(LineView)
        view.border_title = "Log · loading…"
        view.focus()
        self.query_one("#detail-patterns", Static).border_title = "Patterns in this run"
        backend = self.agentlog.backend
        if backend is not None:
            self.run_worker(self._load(backend), group="detail-log", exit_on_error=False)
            self.run_worker(self._patterns(backend), group="detail-patterns", exit_on_error=False)

    def on_resize(self) -> None:
        self.set_class(self.app.size.width < 110, "-narrow")

    def show_task(self, task: Task) -> None:
        self.run_info = task
        self.query_one("#detail-facts", Static).update(facts_text(task, self.agentlog.now()))

    async def _load(self, backend: Backend) -> None:
        f = self.agentlog.settings.fields
        maker = LineMaker(
            agent_label=f.agent,
            level_label=f.level,
            run_id_field=f.run_id,
            event_field=f.event,
            task_field=f.task,
            show_agent=False,
        )
        try:
            entries = await backend.run_logs(self.run_info.run_id, limit=RUN_LOG_LIMIT)
            lines = await asyncio.to_thread(functools.partial(maker.make_all, entries, eager=True))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("run log of %s failed", self.run_info.run_id, exc_info=True)
            self._show_lines([], f"Log · failed: {describe(exc)}")
            return
        errors = sum(1 for ln in lines if ln.is_error)
        more = len(entries) >= RUN_LOG_LIMIT
        self._show_lines(
            lines, f"Log · {len(lines):,} lines · {errors} errors{' · loading…' if more else ''}"
        )
        if more:
            await self._load_rest(backend, maker, entries, len(lines), errors)

    async def _load_rest(
        self,
        backend: Backend,
        maker: LineMaker,
        entries: list[TailEntry],
        total: int,
        errors: int,
    ) -> None:
        """A long run: page on from the newest line loaded, a page at a time, appending to the
        virtual view (which draws only what is visible), up to RUN_LOG_MAX lines."""
        view = self.query_one(LineView)
        last_ts = entries[-1].entry.ts
        at_last = {_entry_key(te) for te in entries if te.entry.ts == last_ts}
        while total < RUN_LOG_MAX:
            try:
                page = await backend.run_logs(
                    self.run_info.run_id, limit=RUN_LOG_LIMIT, from_ns=last_ts
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("run log page of %s failed", self.run_info.run_id, exc_info=True)
                view.border_title = f"Log · {total:,} lines · more failed: {describe(exc)}"
                return
            fresh = [te for te in page if te.entry.ts > last_ts or _entry_key(te) not in at_last]
            if not fresh:
                break
            new_lines = await asyncio.to_thread(
                functools.partial(maker.make_all, fresh, eager=True)
            )
            view.append(new_lines, follow=False)
            total += len(new_lines)
            errors += sum(1 for ln in new_lines if ln.is_error)
            new_last = fresh[-1].entry.ts
            keys = {_entry_key(te) for te in fresh if te.entry.ts == new_last}
            at_last = at_last | keys if new_last == last_ts else keys
            last_ts = new_last
            view.border_title = f"Log · {total:,} lines · {errors} errors · loading…"
            if len(page) < RUN_LOG_LIMIT:
                break
        capped = " (first lines only)" if total >= RUN_LOG_MAX else ""
        view.border_title = f"Log · {total:,} lines · {errors} errors{capped}"

    def _show_lines(self, lines: list[LogLine], title: str) -> None:
        view = self.query_one(LineView)
        view.set_lines(lines)
        view.border_title = title
        view.border_subtitle = "e/E errors · / search · y copy"
        if self.first_error and lines:
            view.jump_error(True)
        self.loaded.set()

    async def _patterns(self, backend: Backend) -> None:
        out = self.query_one("#detail-patterns", Static)
        if not hasattr(backend, "failure_patterns"):
            out.update(Text("patterns need a newer backend", style="bright_black"))
            return
        task = self.run_info
        start = (task.started_at or task.last_seen or self.agentlog.now()) - 60 * 10**9
        end = (task.ended_at or task.last_seen or self.agentlog.now()) + 60 * 10**9
        try:
            report = await backend.failure_patterns(start, end, run_id=task.run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            out.update(Text(f"patterns failed: {describe(exc)}", style="yellow"))
            return
        out.update(patterns_text(report))

    # ------------------------------------------------------------------ actions

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_summarize(self, refresh: bool = False) -> None:
        backend = self.agentlog.backend
        if backend is not None:
            self.query_one(SummaryPane).summarize(backend, self.run_info, refresh=refresh)

    def action_switch_focus(self) -> None:
        view = self.query_one(LineView)
        if view.has_focus:
            self.query_one(SummaryPane).focus()
        else:
            view.focus()

    def action_triage(self, state: str) -> None:
        self.agentlog.triage(self.run_info, TriageState(state))

    def action_undo_triage(self) -> None:
        self.agentlog.undo_triage()

    @on(LineView.Notice)
    def _notice(self, event: LineView.Notice) -> None:
        event.stop()
        self.app.notify(event.text, markup=False, timeout=3)

    @on(LineView.Navigated)
    @on(LineView.ReachedEnd)
    def _moved(self, event: LineView.Navigated | LineView.ReachedEnd) -> None:
        event.stop()

    @on(LineView.SearchRequested)
    def _search(self, event: LineView.SearchRequested) -> None:
        event.stop()
        self.query_one("#detail-search", SearchBar).open(self.query_one(LineView).search_text)

    @on(Input.Changed, "#detail-search")
    def _search_typed(self, event: Input.Changed) -> None:
        event.stop()
        found = self.query_one(LineView).set_search(event.value, jump="forward")
        event.input.set_class(bool(event.value) and not found, "-nomatch")

    @on(Input.Submitted, "#detail-search")
    def _search_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#detail-search", SearchBar).keep_and_close()
        self.query_one(LineView).focus()

    @on(SearchBar.Closed, "#detail-search")
    def _search_closed(self, event: SearchBar.Closed) -> None:
        event.stop()
        view = self.query_one(LineView)
        if event.cleared:
            view.set_search("", jump="none")
        view.focus()
