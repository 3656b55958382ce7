"""The pane switcher shown on narrow terminals (80x24): `1 Tasks  2 Tail  3 Patterns  4 Summary`.
Keys 1-4 (or tab) switch; a click works too."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["PANES", "PaneTabs"]

PANES: tuple[tuple[str, str], ...] = (
    ("tasks", "Tasks"),
    ("tail", "Live tail"),
    ("patterns", "Patterns"),
    ("summary", "Summary"),
)


class PaneTabs(Widget):
    active: reactive[str] = reactive("tasks")
    marks: reactive[frozenset[str]] = reactive(frozenset())  # panes with something new

    class Picked(Message):
        def __init__(self, pane: str) -> None:
            super().__init__()
            self.pane = pane

    def _spans(self) -> list[tuple[str, str, int, int]]:
        out, x = [], 0
        for i, (key, label) in enumerate(PANES, 1):
            word = f" {i} {label}{' •' if key in self.marks else ''} "
            out.append((key, word, x, x + len(word)))
            x += len(word) + 1
        return out

    def render(self) -> Text:
        text = Text()
        for key, word, _, _ in self._spans():
            text.append(word, style="bold reverse" if key == self.active else "")
            text.append(" ")
        return text

    def on_click(self, event: events.Click) -> None:
        for key, _, start, end in self._spans():
            if start <= event.x < end:
                self.post_message(self.Picked(key))
                return
