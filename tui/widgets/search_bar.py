"""A one-line input for filter-as-you-type and search-as-you-type; `escape` closes it."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import Input


class SearchBar(Input):
    """Posts `Input.Changed` as you type, `Input.Submitted` on enter, `Closed` on escape.

    The cursor does not blink: a blinking cursor repaints twice a second, which a slow SSH
    link pays for."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", show=True, id="search.close"),
    ]

    class Closed(Message):
        def __init__(self, bar: SearchBar, cleared: bool) -> None:
            super().__init__()
            self.bar = bar
            self.cleared = cleared

        @property
        def control(self) -> SearchBar:
            return self.bar

    def on_mount(self) -> None:
        self.cursor_blink = False

    def open(self, value: str = "") -> None:
        self.display = True
        self.value = value
        self.cursor_position = len(value)
        self.focus()

    def action_close(self) -> None:
        """Escape: clear and close."""
        self.value = ""
        self.display = False
        self.post_message(self.Closed(self, cleared=True))

    def keep_and_close(self) -> None:
        """Enter: keep the text, close the bar."""
        self.display = False
        self.post_message(self.Closed(self, cleared=False))
