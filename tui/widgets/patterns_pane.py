"""The Failure patterns pane: the table of templates and signals, a bar chart of the top ones,
and the error rate over the window."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from backend.models import PatternReport

from ..sanitize import sanitize
from .error_rate_chart import ErrorRateChart
from .pattern_bars import PatternBars
from .pattern_table import PatternTable

__all__ = ["PatternsPane"]


class PatternsPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(Text("mining the time window…", style="bright_black"), id="patterns-note")
        yield PatternTable(id="patterns-table")
        with Horizontal(id="patterns-charts"):
            yield PatternBars(id="patterns-bars")
            yield ErrorRateChart(id="patterns-rate")

    def on_mount(self) -> None:
        self.border_title = "3 Failure patterns"

    @property
    def table(self) -> PatternTable:
        return self.query_one(PatternTable)

    def show_report(self, report: PatternReport, range_label: str) -> None:
        pats = report.patterns
        new = sum(1 for p in pats if p.new)
        self.border_title = f"3 Failure patterns · {len(pats)} · {new} new"
        self.border_subtitle = f"{report.error_lines:,} error lines · last {range_label}"
        note = self.query_one("#patterns-note", Static)
        note.display = not pats
        if not pats:
            note.update(Text("no error lines in this time window", style="bright_black"))
        self.table.show(pats)
        self.query_one(PatternBars).show(pats)
        self.query_one(ErrorRateChart).show(report.error_rate, report.end_ns / 1e9)

    def unavailable(self, reason: str) -> None:
        note = self.query_one("#patterns-note", Static)
        note.display = True
        note.update(Text(sanitize(reason), style="yellow"))
