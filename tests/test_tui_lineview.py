"""The log view on its own: 100,000 lines stay fast (only visible lines are rendered), the
cursor, error jumps, search, mouse clicks; and the app when the backend cannot open."""

from __future__ import annotations

import time
from pathlib import Path

from test_tui_support import make_settings, screen_lines, screen_text, wait_for
from textual.app import App, ComposeResult

from backend.errors import ServiceUnavailable, UsageError
from backend.facade import Backend
from tui.app import AgentlogApp
from tui.loglines import LogLine
from tui.widgets.line_view import LineView

N = 100_000


def _lines() -> list[LogLine]:
    out = []
    for i in range(N):
        level = "error" if i in (250, 99_990) else "info"
        out.append(LogLine(i, i, f"{i:06d} ", f"step {i} of a long run", level, "run-x"))
    return out


class ViewApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LineView(None, id="log")


async def test_a_hundred_thousand_lines() -> None:
    app = ViewApp()
    lines = _lines()
    async with app.run_test(size=(80, 24)) as pilot:
        view = app.query_one(LineView)
        view.focus()
        t0 = time.perf_counter()
        view.set_lines(lines)
        await pilot.pause()
        assert time.perf_counter() - t0 < 1.0
        assert view.virtual_size.height == N
        await pilot.press("e")
        assert view.cursor == 250
        await pilot.press("e")
        assert view.cursor == 99_990
        assert "099990 step 99990" in "\n".join(
            "".join(s.text for s in strip) for strip in app.screen._compositor.render_strips()
        )
        t0 = time.perf_counter()
        for _ in range(20):
            await pilot.press("ctrl+u")
        assert time.perf_counter() - t0 < 2.0
        await pilot.press("G")
        assert view.cursor is None and view.scroll_y == view.max_scroll_y
        await pilot.press("g")
        assert view.cursor == 0
        view.set_search("step 4242 ", jump="forward")
        assert view.cursor == 4242
        await pilot.click("#log", offset=(5, 3))
        assert view.cursor == int(view.scroll_y) + 3


async def test_backend_that_cannot_open_shows_why(tmp_path: Path) -> None:
    async def broken() -> Backend:
        raise UsageError("log_source: 'loki' is not available in this version")

    app = AgentlogApp(make_settings(tmp_path), open_backend=broken)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "not available" in screen_text(app), "banner")
        assert "source degraded" in screen_text(app) and "degraded" in screen_lines(app)[0]


async def test_backend_open_is_retried(tmp_path: Path, monkeypatch: object) -> None:
    import tui.app as tui_app

    tui_app.REOPEN_EVERY_S = 0.05  # type: ignore[attr-defined]
    tries = 0

    async def flaky() -> Backend:
        nonlocal tries
        tries += 1
        if tries < 3:
            raise ServiceUnavailable("the database is locked by another process")
        return await Backend.open(make_settings(tmp_path))

    app = AgentlogApp(make_settings(tmp_path), open_backend=flaky)
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.backend is not None, "opened", 5)
            await wait_for(pilot, lambda: "source degraded" not in screen_text(app), "recovered")
            assert tries == 3
    finally:
        tui_app.REOPEN_EVERY_S = 5.0  # type: ignore[attr-defined]
