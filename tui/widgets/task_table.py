"""The runs table: a DataTable reconciled in place, keyed by run id.

A refresh never rebuilds what did not change: when the order of runs is the same, only changed
cells are updated; when runs were only added at the end (the next page), rows are appended; any
other change rebuilds the rows but keeps the cursor on the same run and that run at the same
height on screen. Cells are `Text` built from sanitized plain strings (a `str` cell would be
parsed as markup by DataTable).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.binding import BindingType
from textual.message import Message
from textual.widgets import DataTable
from textual.widgets.data_table import RowDoesNotExist

from backend.models import Task

from .. import fmt
from ..bindings import bindings_for
from ..sanitize import sanitize

__all__ = ["TaskTable"]

LOAD_MORE_MARGIN = 3  # rows before the end at which the next page is asked for


@dataclass(frozen=True, slots=True)
class _Col:
    key: str
    label: str
    width: int  # 0 = flexible


_FIXED: tuple[_Col, ...] = (
    _Col("status", " ", 1),
    _Col("run", "Run", 6),
    _Col("agent", "Agent", 10),
    _Col("task", "Task", 0),
    _Col("started", "Age", 3),
    _Col("duration", "Dur", 6),
    _Col("errors", "Err", 3),
    _Col("tokens", "Tok", 4),
    _Col("cost", "Cost", 6),
    _Col("triage", "Tri", 3),
)
_LAST_ERROR = _Col("last_error", "Last error", 0)
WIDE_TABLE = 100  # from this many columns on, a "Last error" column shares the flexible space


def _cells(task: Task, now_ns: int, cols: Sequence[_Col]) -> dict[str, Text]:
    out: dict[str, Text] = {}
    for col in cols:
        k = col.key
        if k == "status":
            out[k] = fmt.status_text(task.status)
        elif k == "run":
            out[k] = Text(fmt.short_id(task.run_id, col.width))
        elif k == "agent":
            out[k] = Text(sanitize(task.agent))
        elif k == "task":
            out[k] = Text(sanitize(task.task) or "–")
        elif k == "started":
            out[k] = Text(fmt.ago(task.started_at or task.last_seen, now_ns), justify="right")
        elif k == "duration":
            out[k] = Text(fmt.duration(fmt.live_duration(task, now_ns)), justify="right")
        elif k == "errors":
            style = "red" if task.error_count else "bright_black"
            out[k] = Text(str(task.error_count), style=style, justify="right")
        elif k == "tokens":
            n = task.input_tokens + task.output_tokens
            out[k] = Text(fmt.tokens(n), justify="right")
        elif k == "cost":
            out[k] = Text(fmt.cost(task.cost_usd), justify="right")
        elif k == "triage":
            out[k] = fmt.triage_text(task.triage)
        elif k == "last_error":
            out[k] = Text(sanitize(task.last_error), style="red")
    return out


def _whole_second(ns: int) -> int:
    """Clock-dependent cells change at most once a second: every cell change repaints the whole
    table (DataTable drops its row cache), which costs a frame over a slow link."""
    return ns - ns % 1_000_000_000


def _sig(text: Text) -> tuple[str, str]:
    return text.plain, str(text.style)


class TaskTable(DataTable[Text]):
    """Runs, one row each, keyed by run id."""

    BINDINGS: ClassVar[list[BindingType]] = [*bindings_for("tasks")]

    class LoadMore(Message):
        """The cursor is near the last loaded row."""

    class Activated(Message):
        """enter / e on a row."""

        def __init__(self, task: Task, first_error: bool) -> None:
            super().__init__()
            self.task = task
            self.first_error = first_error

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(
            id=id,
            classes=classes,
            cursor_type="row",
            zebra_stripes=False,
            cell_padding=1,
        )
        self.tasks: dict[str, Task] = {}
        self.keys: list[str] = []
        self.has_more = False
        self.now_ns = 0
        self._cols: tuple[_Col, ...] = ()
        self._sigs: dict[str, dict[str, tuple[str, str]]] = {}

    # ------------------------------------------------------------------ columns

    def _layout(self, width: int) -> tuple[_Col, ...]:
        fixed = [c for c in _FIXED if c.width]
        used = sum(c.width + 2 for c in fixed) + 2 + 1  # cell padding, flexible's padding, bar
        flexible = max(8, width - used)
        if width >= WIDE_TABLE:
            task_w = max(16, min(34, flexible // 2))
            err_w = max(8, flexible - task_w - 2)
            cols = [c if c.key != "task" else _Col("task", "Task", task_w) for c in _FIXED]
            return (*cols, _Col("last_error", _LAST_ERROR.label, err_w))
        return tuple(c if c.key != "task" else _Col("task", "Task", flexible) for c in _FIXED)

    def _apply_layout(self, cols: tuple[_Col, ...]) -> None:
        if cols == self._cols:
            return
        selected = self.selected_run_id
        self._cols = cols
        self.clear(columns=True)
        for c in cols:
            self.add_column(Text(c.label, style="bold"), key=c.key, width=c.width)
        self.keys = []
        self._sigs = {}
        tasks = [self.tasks[k] for k in list(self.tasks)]
        self.tasks = {}
        self.reconcile(tasks, self.now_ns, has_more=self.has_more, keep=selected)

    def on_resize(self, event: events.Resize) -> None:
        self._apply_layout(self._layout(event.size.width))

    def on_mount(self) -> None:
        self._apply_layout(self._layout(self.size.width or 80))

    # ------------------------------------------------------------------ rows

    @property
    def selected_run_id(self) -> str | None:
        if not self.keys:
            return None
        row = self.cursor_row
        if 0 <= row < len(self.keys):
            return self.keys[row]
        return None

    @property
    def selected_task(self) -> Task | None:
        rid = self.selected_run_id
        return None if rid is None else self.tasks.get(rid)

    def _add(self, task: Task) -> None:
        cells = _cells(task, self.now_ns, self._cols)
        self.add_row(*cells.values(), key=task.run_id)
        self._sigs[task.run_id] = {k: _sig(v) for k, v in cells.items()}

    def _update(self, task: Task) -> None:
        cells = _cells(task, self.now_ns, self._cols)
        sigs = self._sigs.setdefault(task.run_id, {})
        for key, text in cells.items():
            sig = _sig(text)
            if sigs.get(key) != sig:
                sigs[key] = sig
                with contextlib.suppress(RowDoesNotExist):
                    self.update_cell(task.run_id, key, text)

    def reconcile(
        self,
        tasks: Sequence[Task],
        now_ns: int,
        *,
        has_more: bool,
        keep: str | None = None,
    ) -> None:
        """Make the table show `tasks` in this order, changing as little as possible."""
        self.now_ns = _whole_second(now_ns)
        self.has_more = has_more
        if not self._cols:
            self.tasks = {t.run_id: t for t in tasks}
            self.keys = list(self.tasks)
            return
        new_keys = [t.run_id for t in tasks]
        if len(set(new_keys)) != len(new_keys):  # a run moved between pages: keep the first
            seen: set[str] = set()
            unique = []
            for t in tasks:
                if t.run_id not in seen:
                    seen.add(t.run_id)
                    unique.append(t)
            tasks = unique
            new_keys = [t.run_id for t in tasks]
        old_keys = self.keys
        if new_keys == old_keys:
            for t in tasks:
                self.tasks[t.run_id] = t
                self._update(t)
            return
        if old_keys and new_keys[: len(old_keys)] == old_keys:
            for t in tasks[: len(old_keys)]:
                self.tasks[t.run_id] = t
                self._update(t)
            for t in tasks[len(old_keys) :]:
                self.tasks[t.run_id] = t
                self._add(t)
            self.keys = new_keys
            return
        self._rebuild(tasks, keep if keep is not None else self.selected_run_id)

    def _rebuild(self, tasks: Sequence[Task], selected: str | None) -> None:
        old_row = self.cursor_row if self.keys else 0
        old_top = int(self.scroll_y)
        self.clear()
        self._sigs = {}
        self.tasks = {t.run_id: t for t in tasks}
        self.keys = [t.run_id for t in tasks]
        for t in tasks:
            self._add(t)
        if not tasks:
            return
        new_row = (
            self.keys.index(selected) if selected in self.tasks else min(old_row, len(tasks) - 1)
        )
        self.move_cursor(row=new_row, animate=False, scroll=False)
        # At the top of the list, stay there: new failing runs arrive in view. Further down,
        # keep the selected run at the same height on screen (what you read does not jump).
        top = 0 if old_top == 0 else max(0, old_top + new_row - old_row)
        self.scroll_to(y=top, animate=False, immediate=True)

    def tick(self, now_ns: int) -> None:
        """Update the clock-dependent cells (ages, live durations) in place."""
        self.now_ns = _whole_second(now_ns)
        for t in self.tasks.values():
            self._update(t)

    def replace_task(self, task: Task) -> None:
        """One run changed (e.g. its triage): update its row now, without a round trip."""
        if task.run_id in self.tasks:
            self.tasks[task.run_id] = task
            self._update(task)

    def select_run(self, run_id: str) -> bool:
        if run_id not in self.tasks:
            return False
        self.move_cursor(row=self.keys.index(run_id), animate=False)
        return True

    # ------------------------------------------------------------------ actions

    @on(DataTable.RowHighlighted)
    def _near_the_end(self, event: DataTable.RowHighlighted) -> None:
        if self.has_more and self.keys and event.cursor_row >= len(self.keys) - LOAD_MORE_MARGIN:
            self.post_message(self.LoadMore())

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        if self.has_more and self.keys and new >= self.max_scroll_y > 0:
            self.post_message(self.LoadMore())

    def action_open_run(self) -> None:
        task = self.selected_task
        if task is not None:
            self.post_message(self.Activated(task, first_error=False))

    def action_open_first_error(self) -> None:
        task = self.selected_task
        if task is not None:
            self.post_message(self.Activated(task, first_error=True))
