"""A virtual log view: renders only the visible lines of a bounded deque of display lines.

Lines are `LogLine`s (sanitized plain strings); each visible line becomes a Rich `Text` built
from those strings with styles (level colour, search highlight, cursor), never from markup. A
small LRU of rendered strips keyed by the line's sequence number keeps scrolling cheap, so the
same widget serves the live tail (a few thousand lines, appended at 10 Hz) and a run's whole log
(100k+ lines, loaded once).

The view has an optional cursor (a line index). `None` means "at the end" (following). Moving
the cursor posts `Navigated` (the tail pauses); going to the end posts `ReachedEnd` (it resumes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import BindingType
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..bindings import bindings_for
from ..loglines import LEVEL_STYLES, LogLine

__all__ = ["LineView"]


class LineView(ScrollView, can_focus=True):
    """Lines of a log, virtualized; cursor, search highlight, error jumps, copy."""

    BINDINGS: ClassVar[list[BindingType]] = [*bindings_for("lines")]
    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "lineview--prefix",
        "lineview--cursor",
        "lineview--match",
    }

    class Navigated(Message):
        """The user moved the cursor or scrolled away from the newest line."""

    class ReachedEnd(Message):
        """The user asked for the newest line."""

    class SearchRequested(Message):
        """`/` was pressed in the view."""

    class Notice(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(
        self,
        max_lines: int | None = None,
        *,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.lines: deque[LogLine] = deque(maxlen=max_lines)
        self.cursor: int | None = None
        self.search_text = ""
        self.show_raw = False  # show lines as logged instead of their compact form
        self._needle = ""
        self._width = 0
        self._cache: LRUCache[int, Strip] = LRUCache(512)
        self._at_end = False  # keep the newest line in view across layout changes

    # ------------------------------------------------------------------ content

    @property
    def line_count(self) -> int:
        return len(self.lines)

    def clear(self) -> None:
        self.lines.clear()
        self.cursor = None
        self._at_end = False
        self._width = 0
        self._cache.clear()
        self.virtual_size = Size(0, 0)
        self.scroll_to(0, 0, animate=False, immediate=True)
        self.refresh()

    def set_lines(self, lines: Iterable[LogLine]) -> None:
        self.clear()
        self.append(lines, follow=False)

    def append(self, lines: Iterable[LogLine], *, follow: bool) -> None:
        """Add lines at the end; with `follow`, scroll to the newest one."""
        before = len(self.lines)
        maxlen = self.lines.maxlen
        width = self._width
        added = 0
        for line in lines:
            self.lines.append(line)
            added += 1
            w = line.width_hint()
            if w > width:
                width = w
        if not added:
            return
        self._width = width
        evicted = 0 if maxlen is None else max(0, before + added - maxlen)
        if evicted and self.cursor is not None:
            self.cursor = max(0, self.cursor - evicted)
        self.virtual_size = Size(self._width, len(self.lines))
        if follow:
            self.cursor = None
            self._stick_to_end()
        elif evicted:
            self.scroll_to(y=max(0, self.scroll_y - evicted), animate=False, immediate=True)
        self.refresh()

    # ------------------------------------------------------------------ rendering

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()

    def _text(self, line: LogLine, base: Style, extra: Style | None = None) -> Text:
        style = base if extra is None else base + extra
        text = Text(no_wrap=True, end="", style=style)
        if line.prefix:
            text.append(line.prefix, self.get_component_rich_style("lineview--prefix"))
        text.append(self._shown(line), LEVEL_STYLES.get(line.level, ""))
        needle = self._needle
        if needle:
            hay = text.plain.lower()
            match_style = self.get_component_rich_style("lineview--match")
            start = hay.find(needle, len(line.prefix))
            while start != -1:
                text.stylize(match_style, start, start + len(needle))
                start = hay.find(needle, start + len(needle))
        return text

    def _strip(self, line: LogLine, base: Style, cursor: bool) -> Strip:
        if not cursor:
            cached = self._cache.get(line.seq)
            if cached is not None:
                return cached
        extra = self.get_component_rich_style("lineview--cursor") if cursor else None
        text = self._text(line, base, extra)
        strip = Strip(text.render(self.app.console), text.cell_len)
        if not cursor:
            self._cache[line.seq] = strip
        return strip

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self.rich_style
        index = scroll_y + y
        if index >= len(self.lines):
            return Strip.blank(width, base)
        strip = self._strip(self.lines[index], base, index == self.cursor)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    # ------------------------------------------------------------------ cursor

    @property
    def page_height(self) -> int:
        return max(1, self.scrollable_content_region.height)

    def current_line(self) -> LogLine | None:
        if not self.lines:
            return None
        return self.lines[self.cursor if self.cursor is not None else len(self.lines) - 1]

    def move_cursor(self, index: int, *, notify: bool = True) -> None:
        if not self.lines:
            return
        index = max(0, min(index, len(self.lines) - 1))
        self.cursor = index
        self._at_end = False
        self._show_cursor()
        self.call_after_refresh(self._show_cursor)  # again once the layout knows our height
        self.refresh()
        if notify:
            self.post_message(self.Navigated())

    def _show_cursor(self) -> None:
        index = self.cursor
        if index is None:
            return
        height = self.page_height
        top = int(self.scroll_y)
        if index < top:
            self.scroll_to(y=index, animate=False, immediate=True)
        elif index >= top + height:
            self.scroll_to(y=index - height + 1, animate=False, immediate=True)

    def to_end(self) -> None:
        self.cursor = None
        self._stick_to_end()
        self.refresh()

    def _stick_to_end(self) -> None:
        self._at_end = True
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.call_after_refresh(self._end_after_layout)

    def _end_after_layout(self) -> None:
        if self._at_end and self.scroll_y < self.max_scroll_y:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def on_resize(self) -> None:
        self._end_after_layout()

    def _here(self) -> int:
        return self.cursor if self.cursor is not None else len(self.lines) - 1

    def action_line_down(self) -> None:
        if self.cursor is not None:
            self.move_cursor(self.cursor + 1)

    def action_line_up(self) -> None:
        self.move_cursor(self._here() - 1)

    def action_line_top(self) -> None:
        self.move_cursor(0)

    def action_line_bottom(self) -> None:
        self.to_end()
        self.post_message(self.ReachedEnd())

    def action_line_page_down(self) -> None:
        if self.cursor is not None:
            self.move_cursor(self.cursor + self.page_height)

    def action_line_page_up(self) -> None:
        self.move_cursor(self._here() - self.page_height)

    def on_click(self, event: events.Click) -> None:
        """The mouse works too: a click puts the cursor on that line (and pauses the tail)."""
        index = int(self.scroll_y) + event.y
        if 0 <= index < len(self.lines):
            self.move_cursor(index)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if self.lines:
            self._at_end = False
            self.post_message(self.Navigated())

    # ------------------------------------------------------------------ jumps

    def find(self, pred: Callable[[LogLine], bool], forward: bool) -> int | None:
        """The next line (wrapping) after the cursor that satisfies `pred`. With no cursor, a
        forward search starts at the oldest line, a backward one at the newest."""
        n = len(self.lines)
        if n == 0:
            return None
        lines = self.lines
        if self.cursor is None:
            if forward:
                return next((i for i, line in enumerate(lines) if pred(line)), None)
            order: Iterable[int] = range(n - 1, -1, -1)
        elif forward:
            order = [*range(self.cursor + 1, n), *range(0, self.cursor + 1)]
        else:
            order = [*range(self.cursor - 1, -1, -1), *range(n - 1, self.cursor - 1, -1)]
        return next((i for i in order if pred(lines[i])), None)

    def _jump(self, pred: Callable[[LogLine], bool], forward: bool, what: str) -> bool:
        found = self.find(pred, forward)
        if found is None:
            self.post_message(self.Notice(f"no {what} in the {len(self.lines):,} lines shown"))
            return False
        self.move_cursor(found)
        return True

    def jump_error(self, forward: bool = True) -> bool:
        return self._jump(lambda ln: ln.is_error, forward, "error line")

    def action_next_error(self) -> None:
        self.jump_error(True)

    def action_previous_error(self) -> None:
        self.jump_error(False)

    def _shown(self, line: LogLine) -> str:
        return line.raw or line.body if self.show_raw else line.body

    def _matches(self, line: LogLine) -> bool:
        needle = self._needle
        return needle in self._shown(line).lower() or needle in line.prefix.lower()

    def action_next_match(self) -> None:
        if self._needle:
            self._jump(self._matches, True, f"match for {self.search_text!r}")
        else:
            self.post_message(self.Notice("no search: press / to search"))

    def action_previous_match(self) -> None:
        if self._needle:
            self._jump(self._matches, False, f"match for {self.search_text!r}")
        else:
            self.post_message(self.Notice("no search: press / to search"))

    def action_search(self) -> None:
        self.post_message(self.SearchRequested())

    def set_search(self, text: str, *, jump: str = "back") -> bool:
        """Highlight `text` (case-insensitive) and move to the nearest match: `back` looks at and
        before the cursor (the newest lines first, when following), `forward` at and after it
        (the oldest first, with no cursor), `none` does not move. Returns whether it matched."""
        self.search_text = text
        self._needle = text.lower()
        self._cache.clear()
        self.refresh()
        if not self._needle or jump == "none" or not self.lines:
            return False
        n = len(self.lines)
        if jump == "forward":
            start = self.cursor if self.cursor is not None else 0
            order = [*range(start, n), *range(0, start)]
        else:
            start = self._here()
            order = [*range(start, -1, -1), *range(n - 1, start, -1)]
        lines = self.lines
        found = next((i for i in order if self._matches(lines[i])), None)
        if found is None:
            return False
        self.move_cursor(found)
        return True

    def action_toggle_raw(self) -> None:
        self.show_raw = not self.show_raw
        self._cache.clear()
        self.refresh()
        self.post_message(self.Notice("lines as logged" if self.show_raw else "compact lines"))

    # ------------------------------------------------------------------ copy

    def action_copy_line(self) -> None:
        line = self.current_line()
        if line is None:
            self.post_message(self.Notice("nothing to copy"))
            return
        text = line.original
        self.app.copy_to_clipboard(text)
        self.post_message(self.Notice(f"copied {len(text)} characters (OSC 52)"))
