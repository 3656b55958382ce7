"""Pick the time range: 15m, 1h, 6h, 24h, 7d, or a typed duration."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from ..timerange import PRESETS, TimeRange, parse_duration

__all__ = ["TimeRangeScreen"]


class TimeRangeScreen(ModalScreen[TimeRange | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="modal.close"),
        Binding("j", "cursor('down')", "Down", show=False),
        Binding("k", "cursor('up')", "Up", show=False),
    ]

    def __init__(self, current: TimeRange) -> None:
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="range-box") as box:
            box.border_title = "Time range"
            options = [Option(f"last {tr.label}", id=str(tr.seconds)) for tr in PRESETS]
            options.append(Option("custom…", id="custom"))
            yield OptionList(*options, id="range-options")
            bar = Input(placeholder="e.g. 90m, 2h30m, 3d", id="range-custom")
            bar.cursor_blink = False
            bar.display = False
            yield bar
            yield Static("", id="range-error")

    def on_mount(self) -> None:
        ol = self.query_one(OptionList)
        secs = [tr.seconds for tr in PRESETS]
        ol.highlighted = secs.index(self.current.seconds) if self.current.seconds in secs else 5
        ol.focus()

    def action_cursor(self, where: str) -> None:
        ol = self.query_one(OptionList)
        if ol.has_focus:
            ol.action_cursor_down() if where == "down" else ol.action_cursor_up()

    def action_close(self) -> None:
        self.dismiss(None)

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id or ""
        if oid == "custom":
            bar = self.query_one("#range-custom", Input)
            bar.display = True
            bar.value = self.current.label
            bar.focus()
            return
        self.dismiss(TimeRange(float(oid)))

    @on(Input.Submitted, "#range-custom")
    def _typed(self, event: Input.Submitted) -> None:
        try:
            seconds = parse_duration(event.value)
        except ValueError as exc:
            self.query_one("#range-error", Static).update(Text(str(exc), style="red"))
            return
        self.dismiss(TimeRange(seconds))
