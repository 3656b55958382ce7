"""One header line: app name, data source, its health, the time range, the clock."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from backend.models import HealthState

from ..sanitize import sanitize

__all__ = ["StatusHeader"]

HEALTH_LOOK = {
    HealthState.OK: ("● ok", "green"),
    HealthState.DEGRADED: ("▲ degraded", "bold yellow"),
    HealthState.DOWN: ("✗ down", "bold red"),
}


def elide(source: str, room: int) -> str:
    """Fit `kind: /a/long/path/file` in `room` cells: keep the kind and the end of the path
    (the file name matters most), drop the middle."""
    if len(source) <= room:
        return source
    head, sep, rest = source.partition(": ")
    keep = f"{head}{sep}" if sep and len(head) + 4 < room else ""
    tail = room - len(keep) - 1
    if tail <= 0:
        return ""
    return f"{keep}…{(rest if keep else source)[-tail:]}"


class StatusHeader(Widget):
    source: reactive[str] = reactive("connecting…")
    health: reactive[HealthState] = reactive(HealthState.OK)
    range_label: reactive[str] = reactive("1h")
    clock: reactive[str] = reactive("")
    extra: reactive[str] = reactive("")

    def render(self) -> Text:
        width = self.size.width
        left = Text(" agentlog ", style="bold reverse")
        health, hstyle = HEALTH_LOOK[self.health]
        right = Text()
        if self.extra:
            right.append(f" {sanitize(self.extra)} ", style="bold")
        right.append(f" {health} ", style=hstyle)
        right.append(f" ⏱ last {self.range_label} ", style="bold")
        if self.clock:
            right.append(f" {self.clock} ")
        room = width - left.cell_len - right.cell_len - 2
        source = elide(sanitize(self.source), room)
        middle = Text(f" {source}", style="bright_black")
        pad = max(0, width - left.cell_len - middle.cell_len - right.cell_len)
        return Text.assemble(left, middle, " " * pad, right)
