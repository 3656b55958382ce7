"""The failure patterns as a table: rank, NEW flag, kind, lines, runs, template."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import BindingType
from textual.message import Message
from textual.widgets import DataTable

from backend.models import Pattern, PatternKind

from ..bindings import bindings_for
from ..sanitize import sanitize

__all__ = ["KIND_LABELS", "SIGNAL_KINDS", "PatternTable"]

SIGNAL_KINDS = frozenset({PatternKind.LOOP, PatternKind.RETRY_STORM, PatternKind.STALL})
KIND_LABELS: dict[PatternKind, tuple[str, str]] = {
    PatternKind.ERROR: ("error", "red"),
    PatternKind.LOOP: ("loop", "magenta"),
    PatternKind.RETRY_STORM: ("retry", "magenta"),
    PatternKind.STALL: ("stall", "yellow"),
    PatternKind.COST_SPIKE: ("cost", "cyan"),
}


class PatternTable(DataTable[Text]):
    BINDINGS: ClassVar[list[BindingType]] = [*bindings_for("patterns")]

    class Chosen(Message):
        def __init__(self, rank: int, pattern: Pattern) -> None:
            super().__init__()
            self.rank = rank
            self.pattern = pattern

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", cell_padding=1)
        self.patterns: list[Pattern] = []
        self._width = 0

    def on_mount(self) -> None:
        self._columns(self.size.width or 80)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            self._columns(event.size.width)
            self.show(self.patterns)

    def _columns(self, width: int) -> None:
        self._width = width
        self.clear(columns=True)
        template_w = max(10, width - (2 + 3 + 5 + 5 + 4) - 12 - 1)
        for key, label, w in (
            ("rank", "#", 2),
            ("new", "new", 3),
            ("kind", "kind", 5),
            ("count", "lines", 5),
            ("runs", "runs", 4),
            ("template", "template", template_w),
        ):
            self.add_column(Text(label, style="bold"), key=key, width=w)

    def show(self, patterns: list[Pattern]) -> None:
        selected = self.selected_id
        self.patterns = list(patterns)
        self.clear()
        for i, p in enumerate(self.patterns, 1):
            kind, style = KIND_LABELS.get(p.kind, (p.kind.value[:5], ""))
            self.add_row(
                Text(str(i), justify="right"),
                Text("NEW", style="bold yellow") if p.new else Text(""),
                Text(kind, style=style),
                Text(str(p.count), justify="right"),
                Text(str(p.run_count), justify="right"),
                Text(sanitize(p.template)),
                key=p.id,
            )
        if selected is not None:
            ids = [p.id for p in self.patterns]
            if selected in ids:
                self.move_cursor(row=ids.index(selected), animate=False)

    @property
    def selected_id(self) -> str | None:
        row = self.cursor_row
        if self.patterns and 0 <= row < len(self.patterns):
            return self.patterns[row].id
        return None

    def action_select_pattern(self) -> None:
        row = self.cursor_row
        if self.patterns and 0 <= row < len(self.patterns):
            self.post_message(self.Chosen(row + 1, self.patterns[row]))
