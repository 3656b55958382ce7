"""Pilot tests of what one does with a run: its summary (streaming, regenerate, a stale stream
dropped), the run detail screen, triage and undo."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_tui_support import running, screen_text, wait_for

from backend.facade import Backend, SummaryChunk
from backend.models import DEFAULT_TENANT, TriageState
from tui.screens.note import NoteScreen
from tui.screens.run_detail import RunDetailScreen
from tui.widgets.line_view import LineView
from tui.widgets.summary_pane import SummaryPane


async def test_summary_streams_into_the_panel(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        dash = app.dashboard
        task = dash.table.selected_task
        assert task is not None
        await pilot.press("s")  # one key, from launch
        assert dash.active_pane == "summary"  # at 80x24 the summary pane comes forward
        await wait_for(pilot, lambda: not dash.summary.streaming, "summary done")
        text = screen_text(app)
        assert "OFFLINE" in text and "extractive" in text
        assert task.run_id in text and "Errors" in text
        assert dash.summary.run_id == task.run_id
        await pilot.press("S")
        assert "regenerating" in screen_text(app) or not dash.summary.streaming
        await wait_for(pilot, lambda: not dash.summary.streaming, "regenerated")
        assert "OFFLINE" in screen_text(app)


class SlowSummaries(Backend):
    """Summaries that stream slowly, to move the selection while one is in flight."""

    async def summarize(
        self, run_id: str, *, refresh: bool = False, tenant: str = DEFAULT_TENANT
    ) -> AsyncIterator[SummaryChunk]:
        for i in range(50):
            await asyncio.sleep(0.05)
            yield SummaryChunk(f"slow chunk {i} of {run_id}\n")


async def test_a_stale_summary_is_cancelled_when_the_selection_moves(tmp_path: Path) -> None:
    async with running(tmp_path, size=(160, 48), cls=SlowSummaries) as (app, pilot):
        dash = app.dashboard
        first = dash.table.selected_task
        assert first is not None
        await pilot.press("s")
        await wait_for(pilot, lambda: "slow chunk 1 " in screen_text(app), "streaming")
        await pilot.press("j")
        await pilot.pause(0.3)
        summary = dash.query_one(SummaryPane)
        assert not summary.streaming and summary.run_id is None
        text = screen_text(app)
        assert "cancelled" in text and "slow chunk" not in text


async def test_run_detail_and_back_to_the_same_place(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        table = app.dashboard.table
        await pilot.press("j", "j", "j")
        chosen = table.selected_run_id
        await pilot.press("enter")
        assert isinstance(app.screen, RunDetailScreen)
        screen = app.screen
        await asyncio.wait_for(screen.loaded.wait(), 5)
        view = screen.query_one(LineView)
        assert view.line_count > 3
        assert {ln.run_id for ln in view.lines} == {chosen}
        assert chosen in screen_text(app)
        await pilot.press("e")
        assert view.cursor is not None and view.lines[view.cursor].is_error
        await pilot.press("s")
        summary = screen.query_one(SummaryPane)
        await wait_for(pilot, lambda: summary.run_id == chosen and not summary.streaming)
        await pilot.press("escape")
        assert not isinstance(app.screen, RunDetailScreen)
        assert table.selected_run_id == chosen and table.cursor_row == 3


async def test_first_error_in_one_key(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        await pilot.press("e")
        assert isinstance(app.screen, RunDetailScreen)
        await asyncio.wait_for(app.screen.loaded.wait(), 5)
        view = app.screen.query_one(LineView)
        assert view.cursor is not None
        assert view.lines[view.cursor].is_error
        assert not any(ln.is_error for ln in list(view.lines)[: view.cursor])


async def test_triage_and_undo(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        table = app.dashboard.table
        backend = app.backend
        assert backend is not None
        rid = table.selected_run_id
        assert rid is not None

        async def state() -> TriageState:
            return (await backend.get_task(rid)).triage

        await pilot.press("a")
        await wait_for(pilot, lambda: table.tasks[rid].triage == TriageState.ACKED, "acked")
        assert await state() == TriageState.ACKED
        assert table.get_cell(rid, "triage").plain == "ack"
        assert (await backend.get_task(rid)).triage_by == "oncall"
        await pilot.press("r")
        await wait_for(pilot, lambda: table.tasks[rid].triage == TriageState.RESOLVED)
        await pilot.press("u")
        await wait_for(pilot, lambda: table.tasks[rid].triage == TriageState.ACKED, "undone")
        assert await state() == TriageState.ACKED
        # ignore asks for a note
        await pilot.press("i")
        assert isinstance(app.screen, NoteScreen)
        await pilot.press(*"known flake", "enter")
        await wait_for(pilot, lambda: table.tasks[rid].triage == TriageState.IGNORED, "ignored")
        assert (await backend.get_task(rid)).triage_note == "known flake"
        # ignored -> acked is refused by the transition rules: the undo says so
        await pilot.press("u")
        await wait_for(
            pilot, lambda: any("Cannot undo" in str(n.message) for n in app._notifications)
        )
        assert await state() == TriageState.IGNORED
        await pilot.press("u")  # the first action (new -> acked) is undone: ignored -> new is fine
        await wait_for(pilot, lambda: table.tasks[rid].triage == TriageState.NEW, "new again")
        await pilot.press("u")
        await wait_for(
            pilot, lambda: any("Nothing to undo" in str(n.message) for n in app._notifications)
        )


async def test_triage_from_the_detail_screen(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        rid = app.dashboard.table.selected_run_id
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        await pilot.press("a")
        await wait_for(pilot, lambda: screen.run_info.triage == TriageState.ACKED, "acked")
        await pilot.press("escape")
        assert rid is not None
        assert app.dashboard.table.tasks[rid].triage == TriageState.ACKED


async def test_a_long_run_log_loads_page_after_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole log of a run longer than one page (the store's per-query cap; made tiny here)
    arrives in order, each line once."""
    import tui.screens.run_detail as run_detail

    monkeypatch.setattr(run_detail, "RUN_LOG_LIMIT", 7)
    async with running(tmp_path) as (app, pilot):
        backend = app.backend
        assert backend is not None
        table = app.dashboard.table
        run_id = table.selected_run_id
        assert run_id is not None
        expected = await backend.run_logs(run_id, limit=100_000)
        assert len(expected) > 7 * 2
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        view = screen.query_one(LineView)
        await wait_for(pilot, lambda: "loading" not in str(view.border_title), "all pages", 10)
        assert view.line_count == len(expected)
        assert [ln.ts for ln in view.lines] == [te.entry.ts for te in expected]
        assert f"{len(expected):,} lines" in str(view.border_title)
