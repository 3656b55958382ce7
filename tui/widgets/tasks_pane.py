"""The Tasks pane: filter bar, active-filter chips, the runs table, an empty-state line."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from backend.models import Task

from ..sanitize import sanitize
from ..task_query import SORT_LABELS, TaskQuery
from .search_bar import SearchBar
from .task_table import TaskTable

__all__ = ["TasksPane"]

_COUNT_ORDER = ("failed", "timeout", "stalled", "running", "succeeded", "cancelled")


class TasksPane(Vertical):
    """Runs, failing and stalled first."""

    def compose(self) -> ComposeResult:
        bar = SearchBar(placeholder="filter: task, run id or error text", id="tasks-filter")
        bar.display = False
        yield bar
        yield Static(id="tasks-chips")
        yield TaskTable(id="tasks-table")
        yield Static(id="tasks-empty")

    def on_mount(self) -> None:
        self.border_title = "1 Tasks"
        self.show_query(TaskQuery(), "1h")

    @property
    def table(self) -> TaskTable:
        return self.query_one(TaskTable)

    @property
    def filter_bar(self) -> SearchBar:
        return self.query_one("#tasks-filter", SearchBar)

    def show_query(self, query: TaskQuery, range_label: str) -> None:
        chips = self.query_one("#tasks-chips", Static)
        parts = query.chips()
        chips.display = bool(parts)
        if parts:
            text = Text("filter ", style="bright_black")
            for p in parts:
                text.append(f" {sanitize(p)} ", style="reverse")
                text.append(" ")
            text.append(" x clears", style="bright_black")
            chips.update(text)
        self.border_subtitle = f"{SORT_LABELS[query.sort]} · last {range_label}"

    def show_counts(self, counts: dict[str, int], shown: int, more: bool) -> None:
        total = sum(counts.values())
        parts = [f"{counts[k]} {k}" for k in _COUNT_ORDER if counts.get(k)]
        more_s = "+" if more else ""
        title = f"1 Tasks · {shown}{more_s}/{total}"
        if parts:
            title += " · " + " ".join(parts[:3])
        self.border_title = title

    def show_tasks(
        self, tasks: list[Task], now_ns: int, *, has_more: bool, empty_reason: str
    ) -> None:
        self.table.reconcile(tasks, now_ns, has_more=has_more)
        empty = self.query_one("#tasks-empty", Static)
        empty.display = not tasks
        if not tasks:
            empty.update(Text(empty_reason, style="bright_black"))
