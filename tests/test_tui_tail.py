"""Pilot tests of the Live tail: follow/pause, badge, narrow/widen, search, errors, copy, the
dropped-lines marker, and that a modal pauses the refreshes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from test_tui_support import FROZEN_NS, NS, running, screen_text, wait_for

from backend.facade import Backend
from backend.models import DEFAULT_TENANT, LogEntry, Stream, TailBatch
from tui.screens.help import HelpScreen


def _lines(n: int, start_s: int = 10, agent: str = "coder", level: str = "info") -> list[Stream]:
    entries = [
        LogEntry(
            FROZEN_NS + (start_s + i) * NS,
            f'{{"event":"step","run_id":"run-live00000000","msg":"live line {i}"}}',
            {"run_id": "run-live00000000"},
        )
        for i in range(n)
    ]
    return [Stream({"agent": agent, "level": level}, entries)]


async def test_follow_pause_badge_and_resume(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        tail = app.dashboard.tail
        await pilot.press("2")
        view = tail.view
        assert tail.following and view.line_count > 100
        assert view.scroll_y == view.max_scroll_y  # opens on the newest lines
        # space pauses: new lines wait, the badge counts them
        await pilot.press("space")
        assert not tail.following
        shown = view.line_count
        await app.backend.push(_lines(5))  # type: ignore[union-attr]
        await wait_for(pilot, lambda: "+5 new lines" in screen_text(app), "badge")
        assert view.line_count == shown
        await pilot.press("space")
        await wait_for(pilot, lambda: "live line 4" in screen_text(app), "resumed")
        assert tail.following and view.line_count == shown + 5
        # scrolling up pauses; G resumes
        await pilot.press("k")
        assert not tail.following and view.cursor == view.line_count - 2
        await app.backend.push(_lines(2, start_s=20))  # type: ignore[union-attr]
        await wait_for(pilot, lambda: "+2 new lines" in screen_text(app), "badge again")
        await pilot.press("G")
        await wait_for(pilot, lambda: tail.following and "live line 1" in screen_text(app))
        # a click on the badge resumes too
        await pilot.press("k")
        badge = tail.query_one("#tail-badge")
        await wait_for(pilot, lambda: badge.display, "badge shown")
        await pilot.click("#tail-badge")
        assert tail.following


async def test_narrow_to_the_selected_run_and_widen(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        dash = app.dashboard
        task = dash.table.selected_task
        assert task is not None
        await pilot.press("l")
        assert dash.active_pane == "tail"
        await wait_for(pilot, lambda: dash.tail.view.line_count > 3, "run lines")
        assert {ln.run_id for ln in dash.tail.view.lines} == {task.run_id}
        assert f"run {task.run_id[4:12]}" in str(dash.tail.border_title)
        await pilot.press("L")
        await wait_for(pilot, lambda: dash.tail.view.line_count > 100, "all runs again")
        assert "all runs" in str(dash.tail.border_title)
        assert len({ln.run_id for ln in dash.tail.view.lines}) > 5


async def test_search_as_you_type_next_previous_and_errors(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        await pilot.press("2")
        view = app.dashboard.tail.view
        await pilot.press("slash", *"llm.call")
        await wait_for(pilot, lambda: view.cursor is not None, "a match")
        first = view.cursor
        assert first is not None and "llm.call" in view.lines[first].body.lower()
        await pilot.press("enter")
        assert app.focused is view
        await pilot.press("N")
        assert view.cursor is not None and view.cursor != first
        assert "llm.call" in view.lines[view.cursor].body.lower()
        await pilot.press("n")
        assert view.cursor == first
        # errors
        await pilot.press("e")
        assert view.cursor is not None and view.lines[view.cursor].is_error
        at = view.cursor
        await pilot.press("e")
        assert view.cursor is not None and view.cursor != at and view.lines[view.cursor].is_error
        await pilot.press("E")
        assert view.cursor == at
        # escape in the search bar clears the highlight
        await pilot.press("slash", "escape")
        assert view.search_text == ""


async def test_copy_the_line(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        copied: list[str] = []
        app.copy_to_clipboard = copied.append  # type: ignore[method-assign]
        await pilot.press("2", "k", "y")
        view = app.dashboard.tail.view
        assert view.cursor is not None
        assert copied == [view.lines[view.cursor].original]
        assert copied[0].startswith("{") or copied[0]  # the line as logged


async def test_raw_toggle(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        await pilot.press("2", "v")
        assert app.dashboard.tail.view.show_raw
        await wait_for(pilot, lambda: '{"ts":' in screen_text(app), "lines as logged")


class DroppingBackend(Backend):
    """The real backend, whose tail reports that this subscriber fell behind."""

    def tail(
        self,
        query: str,
        start_ns: int | None = None,
        *,
        limit: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[TailBatch]:
        inner = super().tail(query, start_ns, limit=limit, tenant=tenant)

        async def gen() -> AsyncIterator[TailBatch]:
            first = True
            async for batch in inner:
                yield batch
                if first:
                    first = False
                    yield TailBatch([], dropped=1234, dropped_from=FROZEN_NS, dropped_to=FROZEN_NS)

        return gen()


async def test_dropped_lines_marker(tmp_path: Path) -> None:
    async with running(tmp_path, cls=DroppingBackend) as (app, pilot):
        await pilot.press("2")
        await wait_for(pilot, lambda: "1,234 lines dropped" in screen_text(app), "marker")
        assert app.dashboard.tail.dropped_by_source == 1234


async def test_a_modal_pauses_the_refreshes(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        calls = 0
        backend = app.backend
        assert backend is not None
        original = backend.list_tasks

        async def counting(*a: object, **k: object) -> object:
            nonlocal calls
            calls += 1
            return await original(*a, **k)  # type: ignore[arg-type]

        backend.list_tasks = counting  # type: ignore[method-assign]
        await wait_for(pilot, lambda: calls >= 1, "a refresh (4 Hz while the panes are visible)")
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.pause(0.1)
        calls = 0
        shown = app.dashboard.tail.view.line_count
        await backend.push(_lines(3))
        await pilot.pause(0.5)
        assert calls == 0
        assert app.dashboard.tail.view.line_count == shown  # held in the bounded queue
        await pilot.press("escape")
        await wait_for(pilot, lambda: calls > 0, "refresh resumed")
        await wait_for(pilot, lambda: app.dashboard.tail.view.line_count == shown + 3)
