"""The Live tail pane: a bounded, batched, pausable view of incoming lines.

The tail worker hands lines to `enqueue` (a plain method: no widget changes, no message per
line); `flush`, called by a 10 Hz timer, moves them into the view in one batch. While paused
(space, or scrolling up), new lines wait in a bounded queue and a "+N new lines" badge counts
them; resuming (space, `G`, or a click on the badge) shows them. Lines that fall out of a full
queue are never silently lost: a marker line says how many.
"""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Input, Static

from ..loglines import LogLine, marker_line
from .line_view import LineView
from .search_bar import SearchBar

__all__ = ["TAIL_MAX_LINES", "TailPane"]

TAIL_MAX_LINES = 5000


class _Badge(Static):
    """ "+N new lines": a click resumes following."""

    def on_click(self, event: events.Click) -> None:
        event.stop()
        pane = self.parent
        if isinstance(pane, TailPane):
            pane.set_following(True)


class TailPane(Vertical):
    following: reactive[bool] = reactive(True)
    scope: reactive[str] = reactive("all runs")

    def __init__(
        self, *, max_lines: int = TAIL_MAX_LINES, id: str | None = None, classes: str | None = None
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.max_lines = max_lines
        self.pending: deque[LogLine] = deque(maxlen=max_lines)
        self.overflow = 0  # lines that fell out of `pending` before they were shown
        self.received = 0  # lines handed to this pane since the last reset
        self.shown = 0  # lines moved into the view since the last reset
        self.dropped_by_source = 0

    def compose(self) -> ComposeResult:
        yield LineView(self.max_lines, id="tail-lines")
        badge = _Badge(id="tail-badge")
        badge.display = False
        yield badge
        bar = SearchBar(placeholder="search the tail (n/N next/previous)", id="tail-search")
        bar.display = False
        yield bar

    def on_mount(self) -> None:
        self._retitle()

    @property
    def view(self) -> LineView:
        return self.query_one("#tail-lines", LineView)

    # ------------------------------------------------------------------ data in

    def reset(self, scope: str) -> None:
        """A new tail (other query or time range): forget everything shown and pending."""
        self.pending.clear()
        self.overflow = self.received = self.shown = self.dropped_by_source = 0
        self.scope = scope
        self.view.clear()
        self.following = True
        self._update_badge()

    def enqueue(self, lines: list[LogLine]) -> None:
        """Called by the tail worker; cheap and bounded."""
        room = self.max_lines - len(self.pending)
        if len(lines) > room:
            self.overflow += len(lines) - room
        self.pending.extend(lines)
        self.received += len(lines)

    def note_dropped(self, count: int, text: str) -> None:
        """The source skipped `count` lines (this subscriber fell behind)."""
        self.dropped_by_source += count
        self.enqueue([marker_line(text)])

    @property
    def backlog(self) -> int:
        return len(self.pending)

    def flush(self) -> int:
        """Move pending lines into the view (when following). Returns how many were shown."""
        if not self.following:
            self._update_badge()
            return 0
        if not self.pending and not self.overflow:
            return 0
        batch = list(self.pending)
        self.pending.clear()
        if self.overflow:
            batch.insert(
                0,
                marker_line(
                    f"⋯ {self.overflow:,} lines not shown: they arrived faster than the screen "
                    "updates (they are in the store)"
                ),
            )
            self.overflow = 0
        self.view.append(batch, follow=True)
        self.shown += len(batch)
        self._update_badge()
        return len(batch)

    # ------------------------------------------------------------------ follow / pause

    def set_following(self, on: bool) -> None:
        self.following = on
        if on:
            self.flush()
            self.view.to_end()

    def toggle_following(self) -> None:
        self.set_following(not self.following)

    def watch_following(self, _old: bool, _new: bool) -> None:
        self._update_badge()
        self._retitle()

    def watch_scope(self, _old: str, _new: str) -> None:
        self._retitle()

    def _retitle(self) -> None:
        state = "following" if self.following else "paused"
        self.border_title = f"2 Live tail · {self.scope} · {state}"

    def _update_badge(self) -> None:
        badge = self.query_one("#tail-badge", _Badge)
        waiting = len(self.pending) + self.overflow
        show = not self.following
        badge.display = show
        if show:
            text = Text()
            text.append(f" ▼ +{waiting:,} new lines ", style="bold reverse")
            text.append("  space or click to resume", style="bright_black")
            badge.update(text)

    @on(LineView.Navigated)
    def _user_moved(self, event: LineView.Navigated) -> None:
        event.stop()
        if self.following:
            self.following = False

    @on(LineView.ReachedEnd)
    def _user_at_end(self, event: LineView.ReachedEnd) -> None:
        event.stop()
        self.set_following(True)

    # ------------------------------------------------------------------ search

    @on(LineView.SearchRequested)
    def _open_search(self, event: LineView.SearchRequested) -> None:
        event.stop()
        self.query_one("#tail-search", SearchBar).open(self.view.search_text)

    @on(Input.Changed, "#tail-search")
    def _search_changed(self, event: Input.Changed) -> None:
        event.stop()
        found = self.view.set_search(event.value)
        event.input.set_class(bool(event.value) and not found, "-nomatch")

    @on(Input.Submitted, "#tail-search")
    def _search_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one("#tail-search", SearchBar).keep_and_close()
        self.view.focus()

    @on(SearchBar.Closed, "#tail-search")
    def _search_closed(self, event: SearchBar.Closed) -> None:
        event.stop()
        if event.cleared:
            self.view.set_search("", jump="none")
        self.view.focus()
