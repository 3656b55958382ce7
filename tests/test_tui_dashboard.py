"""Pilot tests of the app shell and the Tasks pane, at 80x24 on a seeded demo store."""

from __future__ import annotations

from pathlib import Path

from test_tui_support import FROZEN_NS, NS, MovingClock, running, screen_text, wait_for
from textual.command import CommandPalette

from backend.models import FAILING_STATUSES, LogEntry, RunStatus, Stream, TriageState
from tui.screens.agent_picker import AgentPickerScreen
from tui.screens.help import HelpScreen
from tui.screens.run_detail import RunDetailScreen
from tui.widgets.summary_pane import SummaryPane


async def test_opens_on_the_newest_failing_run_with_the_header_filled(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, _pilot):
        dash = app.dashboard
        table = dash.table
        assert app.focused is table and table.cursor_row == 0
        first = table.selected_task
        assert first is not None and first.status in FAILING_STATUSES
        assert len(table.keys) == 50 and table.has_more
        text = screen_text(app)
        assert "embedded:" in text and "logs.sqlite3" in text
        assert "● ok" in text and "last 1h" in text and "12:00:00" in text
        assert "1 Tasks" in text and "2 Live tail" in text  # the tab strip at 80x24
        assert "failed" in dash.tasks_pane.border_title
        # only the active pane is on screen at 80x24
        assert dash.tasks_pane.display and dash.tasks_pane.region.height > 15
        assert dash.tail.region.height == 0


async def test_pane_keys_and_tabs(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        dash = app.dashboard
        for key, pane in (("2", "tail"), ("3", "patterns"), ("4", "summary"), ("1", "tasks")):
            await pilot.press(key)
            assert dash.active_pane == pane
            assert dash.query_one(f"#{pane}").region.height > 10
        order = []
        for _ in range(4):
            await pilot.press("tab")
            order.append(dash.active_pane)
        assert order == ["tail", "patterns", "summary", "tasks"]
        await pilot.press("shift+tab")
        assert dash.active_pane == "summary"
        assert isinstance(app.focused, SummaryPane)


async def test_wide_terminal_shows_all_four_panes(tmp_path: Path) -> None:
    async with running(tmp_path, size=(160, 48)) as (app, _pilot):
        dash = app.dashboard
        assert not dash.narrow
        for pane in ("tasks", "tail", "patterns", "summary"):
            assert dash.query_one(f"#{pane}").region.height > 15
        assert dash.query_one("#pane-tabs").region.height == 0


async def test_help_overlay_lists_every_binding(tmp_path: Path) -> None:
    async with running(tmp_path, keys={"triage.ack": "A"}) as (app, pilot):
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("j", "k")
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_remapped_key_and_unknown_binding_id(tmp_path: Path) -> None:
    async with running(tmp_path, keys={"triage.ack": "A", "no.such": "z"}) as (app, pilot):
        assert any("no.such" in str(n.message) for n in app._notifications)
        task = app.dashboard.table.selected_task
        assert task is not None
        await pilot.press("a")  # the old key does nothing now
        await pilot.pause(0.2)
        assert (await app.backend.get_task(task.run_id)).triage == TriageState.NEW  # type: ignore[union-attr]
        await pilot.press("A")
        await wait_for(pilot, lambda: app.dashboard.table.selected_task.triage == "acked")  # type: ignore[union-attr]


async def test_command_palette_actions_and_go_to_run(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        target = app.dashboard.table.tasks[app.dashboard.table.keys[7]]
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*f"go to run {target.run_id[4:12]}")
        await wait_for(pilot, lambda: "Go to run run-" in screen_text(app), "run hit", 15)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunDetailScreen), "detail", 10)
        assert isinstance(app.screen, RunDetailScreen)
        assert app.screen.run_info.run_id == target.run_id
        await pilot.press("escape")
        # an action by name
        await pilot.press("ctrl+p", *"failing only")
        await wait_for(pilot, lambda: "Quick filter" in screen_text(app), "action hit", 15)
        # the palette re-ranks as the search completes: let it settle before choosing
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.dashboard.query_state.failing_only, "filter on", 10)


async def test_filter_as_you_type_and_quick_filters(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        dash = app.dashboard
        await pilot.press("slash", *"coverage")
        await wait_for(
            pilot,
            lambda: (
                bool(dash.table.keys)
                and all("coverage" in t.task.lower() for t in dash.table.tasks.values())
            ),
            "text filter",
        )
        await pilot.press("enter")
        assert app.focused is dash.table and dash.query_state.text == "coverage"
        await pilot.press("slash", "escape")
        await wait_for(pilot, lambda: len(dash.table.keys) == 50, "filter cleared")

        await pilot.press("f")
        await wait_for(
            pilot,
            lambda: all(t.status in FAILING_STATUSES for t in dash.table.tasks.values()),
            "failing only",
        )
        await pilot.press("f", "m")
        await wait_for(
            pilot,
            lambda: all(
                t.status in FAILING_STATUSES and t.triage == TriageState.NEW
                for t in dash.table.tasks.values()
            ),
            "mine to triage",
        )
        await pilot.press("x", "b")
        await wait_for(pilot, lambda: isinstance(app.screen, AgentPickerScreen), "agent picker")
        await pilot.press("j", "enter")  # the first agent, alphabetically: browser
        await wait_for(
            pilot,
            lambda: (
                dash.query_state.agent == "browser"
                and all(t.agent == "browser" for t in dash.table.tasks.values())
            ),
            "by agent",
        )
        assert "agent=browser" in screen_text(app)
        await pilot.press("x")
        await wait_for(pilot, lambda: not dash.query_state.active, "cleared")
        await pilot.press("o")
        await wait_for(pilot, lambda: "newest" in str(dash.tasks_pane.border_subtitle), "sort")


async def test_vim_keys_and_paging(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        table = app.dashboard.table
        await pilot.press("j", "j", "j")
        assert table.cursor_row == 3
        await pilot.press("k")
        assert table.cursor_row == 2
        await pilot.press("ctrl+d")
        assert table.cursor_row > 10
        await pilot.press("ctrl+u")
        assert table.cursor_row < 10
        await pilot.press("G")  # the last loaded row: the next page comes in
        await wait_for(pilot, lambda: len(table.keys) > 50, "next page")
        await pilot.press("g")
        assert table.cursor_row == 0


def _run_lines(rid: str, t: int, *, end: bool) -> list[Stream]:
    start = f'{{"event":"run.start","run_id":"{rid}","agent":"coder","task":"new one"}}'
    entries = [LogEntry(t, start)]
    if end:
        line = f'{{"event":"run.end","run_id":"{rid}","status":"failed","level":"error"}}'
        entries.append(LogEntry(t + NS, line))
    return [Stream({"agent": "coder", "level": "error" if end else "info"}, entries)]


async def test_refresh_keeps_the_cursor_on_its_run(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        table = app.dashboard.table
        await pilot.press("j", "j", "j", "j", "j")
        chosen = table.selected_run_id
        # a new failing run arrives: it sorts to the top, the cursor stays on its run
        await app.backend.push(_run_lines("run-new000000001", FROZEN_NS + NS, end=True))  # type: ignore[union-attr]
        await wait_for(pilot, lambda: table.keys[0] == "run-new000000001", "new run on top")
        assert table.selected_run_id == chosen
        assert table.cursor_row == 6


async def test_running_durations_are_live(tmp_path: Path) -> None:
    clock = MovingClock()
    async with running(tmp_path, clock=clock) as (app, pilot):
        table = app.dashboard.table
        await app.backend.push(_run_lines("run-live00000001", FROZEN_NS, end=False))  # type: ignore[union-attr]
        await pilot.press("o")  # newest first: the running run is on top
        await wait_for(pilot, lambda: table.keys[:1] == ["run-live00000001"], "running run")
        assert table.tasks["run-live00000001"].status == RunStatus.RUNNING
        assert table.get_cell("run-live00000001", "duration").plain == "0.0s"
        clock.advance(12)
        await wait_for(
            pilot,
            lambda: table.get_cell("run-live00000001", "duration").plain == "12.0s",
            "live duration",
        )
        assert table.get_cell("run-live00000001", "started").plain == "12s"


async def test_quit(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0
        assert not app.is_running
