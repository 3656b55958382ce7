"""A one-line banner (degraded source, new failure pattern). Hidden when it has nothing to say."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..sanitize import sanitize

__all__ = ["Banner"]


class Banner(Static):
    def say(self, message: str, hint: str = "") -> None:
        text = Text(f" {sanitize(message)}")
        if hint:
            text.append(f"  {hint}", style="italic")
        self.update(text)
        self.display = True

    def hide(self) -> None:
        self.display = False
        self.update("")

    @property
    def shown(self) -> bool:
        return bool(self.display)
