"""A small dialog for the optional note of a triage action."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from ..sanitize import sanitize

__all__ = ["NoteScreen"]


class NoteScreen(ModalScreen[str | None]):
    """Dismissed with the note (possibly empty) on enter, None on escape."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Cancel", id="modal.close"),
    ]

    def __init__(self, title: str, run_id: str) -> None:
        super().__init__()
        self.title_text = title
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with Vertical(id="note-box") as box:
            box.border_title = self.title_text
            yield Static(Text(f"run {sanitize(self.run_id)}", style="bold"))
            note = Input(placeholder="optional note, enter to confirm, esc to cancel", id="note")
            note.cursor_blink = False
            yield note

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def _done(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())
