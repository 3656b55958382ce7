"""Pick one agent for the "by agent" quick filter."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from ..sanitize import sanitize

__all__ = ["AgentPickerScreen"]

ALL = "\x00all"


class AgentPickerScreen(ModalScreen[str | None]):
    """Dismissed with an agent name, "" for all agents, None on escape."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="modal.close"),
        Binding("j", "cursor('down')", "Down", show=False),
        Binding("k", "cursor('up')", "Up", show=False),
    ]

    def __init__(self, agents: list[str], current: str) -> None:
        super().__init__()
        self.agents = agents
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="agent-box") as box:
            box.border_title = "Agent"
            options = [Option(Text("all agents", style="italic"), id=ALL)]
            options += [Option(Text(sanitize(a)), id=f"a:{a}") for a in self.agents]
            yield OptionList(*options, id="agent-options")

    def on_mount(self) -> None:
        ol = self.query_one(OptionList)
        if self.current in self.agents:
            ol.highlighted = self.agents.index(self.current) + 1
        ol.focus()

    def action_cursor(self, where: str) -> None:
        ol = self.query_one(OptionList)
        ol.action_cursor_down() if where == "down" else ol.action_cursor_up()

    def action_close(self) -> None:
        self.dismiss(None)

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        oid = event.option.id or ALL
        self.dismiss("" if oid == ALL else oid[2:])
