"""The help overlay: every binding, by where it applies, generated from `tui.bindings` with the
keymap from the config applied (so a remapped key shows as remapped)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from ..bindings import KEYS, SCOPE_TITLES, effective_key, key_label
from ..sanitize import sanitize

__all__ = ["HelpScreen", "help_table"]


def help_table(keymap: Mapping[str, str]) -> Group:
    """Every binding, by scope: key, what it does, its id (for `tui.keys`)."""
    parts: list[RenderableType] = []
    for scope, title in SCOPE_TITLES.items():
        specs = [k for k in KEYS if k.scope == scope]
        if not specs:
            continue
        parts.append(Text(title, style="bold underline"))
        table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
        table.add_column("key", style="bold cyan", no_wrap=True, width=11)
        table.add_column("what", ratio=1)
        table.add_column("id", style="bright_black", no_wrap=True, overflow="ellipsis")
        for k in specs:
            what = k.description
            if k.also:
                what += " (also in run detail)"
            table.add_row(
                Text(sanitize(key_label(effective_key(k, keymap)))), Text(what), Text(k.id)
            )
        parts.append(table)
        parts.append(Text(""))
    parts.append(Text("Remap any key in the config: tui.keys: {binding id: key}.", style="italic"))
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close", id="help.close"),
        Binding("j,down", "scroll('down')", "Down", show=False),
        Binding("k,up", "scroll('up')", "Up", show=False),
        Binding("ctrl+d,pagedown", "scroll('page_down')", "Page down", show=False),
        Binding("ctrl+u,pageup", "scroll('page_up')", "Page up", show=False),
    ]

    def __init__(self, keymap: Mapping[str, str]) -> None:
        super().__init__()
        self.keymap = dict(keymap)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body") as body:
            body.border_title = "Keys  (esc closes, j/k scroll)"
            yield Static(help_table(self.keymap), id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, how: str) -> None:
        body = self.query_one("#help-body", VerticalScroll)
        {
            "down": body.scroll_down,
            "up": body.scroll_up,
            "page_down": body.scroll_page_down,
            "page_up": body.scroll_page_up,
        }[how](animate=False)
