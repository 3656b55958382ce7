"""Snapshots of every screen at 80x24 and 160x48, on the seeded demo store under a frozen clock
(an hour of 8 agents, seed 7, ending 2025-03-04 12:00:00 UTC). Update with
`pytest tests/test_tui_snapshots.py --snapshot-update`, then look at the SVGs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from test_tui_support import seeded_app, wait_for, wait_loaded
from textual.pilot import Pilot

from tui.screens.run_detail import RunDetailScreen

SIZES = {"80x24": (80, 24), "160x48": (160, 48)}

Steps = Callable[[Pilot[Any]], Awaitable[None]]


async def _dashboard(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)


async def _tail(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("2")


async def _patterns(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("3")


async def _summary(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("s")
    dash = pilot.app.dashboard  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: dash.summary.run_id and not dash.summary.streaming)


async def _detail_first_error(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("e")
    screen = pilot.app.screen
    assert isinstance(screen, RunDetailScreen)
    await asyncio.wait_for(screen.loaded.wait(), 5)
    await pilot.pause(0.3)  # its patterns


async def _help(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("question_mark")


async def _time_range(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("t")


async def _filtered(pilot: Pilot[Any]) -> None:
    await wait_loaded(pilot)
    await pilot.press("f", "slash", *"kb query")
    dash = pilot.app.dashboard  # type: ignore[attr-defined]
    await wait_for(pilot, lambda: dash.query_state.text == "kb query" and dash.tasks_settled)
    await pilot.pause(0.3)


SCENES: dict[str, Steps] = {
    "dashboard": _dashboard,
    "tail": _tail,
    "patterns": _patterns,
    "summary": _summary,
    "detail_first_error": _detail_first_error,
    "help": _help,
    "time_range": _time_range,
    "filtered": _filtered,
}


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("scene", list(SCENES))
def test_snapshot(scene: str, size: str, tmp_path: Path, snap_compare: Any) -> None:
    app = seeded_app(tmp_path)
    assert snap_compare(app, terminal_size=SIZES[size], run_before=SCENES[scene])
