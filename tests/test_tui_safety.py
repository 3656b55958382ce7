"""A log line is data: hostile lines are shown literally or as visible placeholders, and no
control character reaches the terminal, in every place the TUI shows log text."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

import orjson
from test_tui_support import FROZEN_NS, NS, running, screen_lines, screen_text, wait_for

from backend.models import LogEntry, Stream
from tui.app import AgentlogApp
from tui.screens.run_detail import RunDetailScreen

RUN = "run-hostile00001"
HOSTILE = [
    ("[bold red]x[/]", "[bold red]x[/]"),
    ("\x1b[31mRED\x1b[0m", "␛[31mRED␛[0m"),
    ("\x1b]52;c;ZXZpbA==\x07", "␛]52;c;ZXZpbA==␇"),
    ("\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\", "␛]8;;http://evil.example␛\\click"),
    ("over\rWRITE", "over␍WRITE"),
    ("back\b\b\bspace", "back␈␈␈space"),
    ("user\u202egnp.exe", "user\\u202egnp.exe"),
    ("nul\x00byte", "nul␀byte"),
    ("csi\x9b2Jc1", "csi\\x9b2Jc1"),
    ("bad utf-8 \ufffd kept", "bad utf-8 \ufffd kept"),
]
BIDI_CONTROLS = ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")
TASK_NAME = "[b]deploy[/b] \x1b[5mblink"


def _hostile_streams() -> list[Stream]:
    t = FROZEN_NS + NS
    task = orjson.dumps(TASK_NAME).decode()  # JSON escapes ESC as \u001b
    start = f'{{"event":"run.start","run_id":"{RUN}","agent":"mallory","task":{task}}}'
    entries = [LogEntry(t, start, {"run_id": RUN})]
    for i, (raw, _) in enumerate(HOSTILE, 1):
        entries.append(LogEntry(t + i * 1000, f"line {i}: {raw}", {"run_id": RUN}))
    err = (
        f'{{"event":"error","run_id":"{RUN}","error.type":"Evil",'
        f'"error.message":"boom \\u001b]0;pwned\\u0007 [red]z[/]"}}'
    )
    end = f'{{"event":"run.end","run_id":"{RUN}","status":"failed"}}'
    entries.append(LogEntry(t + 50_000, err, {"run_id": RUN}))
    entries.append(LogEntry(t + 60_000, end, {"run_id": RUN}))
    return [Stream({"agent": "mallory", "level": "error"}, entries)]


def _unsafe(ch: str) -> bool:
    cp = ord(ch)
    return (
        cp < 0x20
        or 0x7F <= cp < 0xA0
        or unicodedata.bidirectional(ch)
        in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI")
        or 0xD800 <= cp < 0xE000
    )


def assert_no_control_reaches_the_terminal(app: AgentlogApp) -> None:
    for row, line in enumerate(screen_lines(app)):
        bad = [f"U+{ord(c):04X}" for c in line if _unsafe(c)]
        assert not bad, f"row {row}: {bad} in {line!r}"


async def test_hostile_lines_are_shown_literally_everywhere(tmp_path: Path) -> None:
    async with running(tmp_path, size=(200, 50)) as (app, pilot):
        await app.backend.push(_hostile_streams())  # type: ignore[union-attr]
        dash = app.dashboard
        # the live tail
        await wait_for(pilot, lambda: "line 10:" in screen_text(app), "hostile tail lines")
        text = screen_text(app)
        for _, shown in HOSTILE:
            assert shown in text, shown
        assert_no_control_reaches_the_terminal(app)
        # the task table (the run sorts to the top: newest failing)
        await wait_for(pilot, lambda: dash.table.keys[:1] == [RUN], "hostile run listed")
        await wait_for(pilot, lambda: "[b]deploy[/b] ␛[5mblink" in screen_text(app), "shown")
        assert_no_control_reaches_the_terminal(app)
        # its summary
        await pilot.press("g", "s")
        await wait_for(pilot, lambda: not dash.summary.streaming and dash.summary.run_id == RUN)
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "[red]z[/]" in text and "␛]0;pwned␇" in text
        assert_no_control_reaches_the_terminal(app)
        # the run detail: facts and the whole log, raw lines too
        await pilot.press("1", "enter")
        screen = app.screen
        assert isinstance(screen, RunDetailScreen)
        await asyncio.wait_for(screen.loaded.wait(), 5)
        await pilot.pause(0.1)
        text = screen_text(app)
        for _, shown in HOSTILE:
            assert shown in text, shown
        assert "[b]deploy[/b]" in text
        assert_no_control_reaches_the_terminal(app)
        await pilot.press("v")
        await pilot.pause(0.1)
        assert_no_control_reaches_the_terminal(app)


async def test_a_line_stays_on_its_own_row(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        await app.backend.push(_hostile_streams())  # type: ignore[union-attr]
        await pilot.press("2")
        await wait_for(pilot, lambda: "line 10:" in screen_text(app), "lines")
        rows = screen_lines(app)
        assert all(len(r) == 80 for r in rows)  # nothing widened or broke a row
        cr = next(r for r in rows if "over␍WRITE" in r)
        assert cr.index("over") < cr.index("WRITE")
