"""Pilot tests of watching: time range, failure patterns (select, new-pattern banner and bell),
and a degraded source that recovers by itself."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from test_tui_support import FROZEN_NS, NS, running, screen_text, wait_for

from backend.errors import ServiceUnavailable
from backend.facade import Backend
from backend.models import (
    DEFAULT_TENANT,
    Pattern,
    PatternKind,
    PatternReport,
    SourceHealth,
    TaskFilter,
    TaskPage,
    TaskSort,
)
from tui.logfiles import setup_file_logging
from tui.screens.time_range import TimeRangeScreen
from tui.widgets.banner import Banner


async def test_time_range_presets_and_custom(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        dash = app.dashboard
        await wait_for(pilot, lambda: "/969" in str(dash.tasks_pane.border_title), "1h count")
        await pilot.press("t")
        assert isinstance(app.screen, TimeRangeScreen)
        await pilot.press("k", "enter")  # 1h -> 15m
        assert app.time_range.label == "15m"
        await wait_for(pilot, lambda: "/969" not in str(dash.tasks_pane.border_title), "15m")
        assert "last 15m" in screen_text(app)
        total = int(str(dash.tasks_pane.border_title).split("/")[1].split()[0])
        assert 0 < total < 969
        # custom: a bad duration is explained, a good one applies
        await pilot.press("t", "end", "enter")
        await pilot.press(*["backspace"] * 5, *"abc", "enter")
        assert isinstance(app.screen, TimeRangeScreen)
        assert "not a duration" in screen_text(app)
        await pilot.press(*["backspace"] * 3, *"2h30m", "enter")
        assert app.time_range.label == "2h30m"
        assert "last 2h30m" in screen_text(app)


class Flaky(Backend):
    """The real backend with a switch that makes its task store and health probe fail."""

    broken = False

    async def list_tasks(
        self,
        flt: TaskFilter | None = None,
        *,
        sort: TaskSort = TaskSort.FAILING_FIRST,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        if self.broken:
            raise ServiceUnavailable("PostgreSQL at 10.0.0.5:5432 refused the connection")
        return await super().list_tasks(flt, sort=sort, limit=limit, cursor=cursor)

    async def health(self) -> list[SourceHealth]:
        if self.broken:
            raise ServiceUnavailable("the log source did not answer in 2 s")
        return await super().health()


async def test_degraded_source_banner_last_good_data_and_recovery(tmp_path: Path) -> None:
    handler = setup_file_logging(tmp_path)  # as `run` does: the app's log goes to files
    try:
        await _degrade_and_recover(tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    log_file = next((tmp_path / "logs").glob("error-*.log"))
    assert "listing runs failed" in log_file.read_text()
    assert "10.0.0.5:5432 refused" in log_file.read_text()


async def _degrade_and_recover(tmp_path: Path) -> None:
    async with running(tmp_path, cls=Flaky) as (app, pilot):
        backend = app.backend
        assert isinstance(backend, Flaky)
        rows = list(app.dashboard.table.keys)
        backend.broken = True
        banner = app.dashboard.query_one("#degraded-banner", Banner)

        def both_reasons() -> bool:
            # The health probe and the task list fail on their own schedules, in either order;
            # at 80 columns the second reason may be cut off the screen, not out of the banner.
            said = str(banner.content)
            return "10.0.0.5:5432 refused" in said and "did not answer" in said

        await wait_for(pilot, both_reasons, "banner")
        text = screen_text(app)
        assert "source degraded" in text and "degraded" in text.splitlines()[0]
        assert app.dashboard.table.keys == rows  # the last good data stays on screen
        backend.broken = False
        await wait_for(pilot, lambda: "source degraded" not in screen_text(app), "recovery", 8)
        assert "● ok" in screen_text(app)


def _signal(report: PatternReport) -> PatternReport:
    loop = Pattern(
        id="signal:loop:coder",
        kind=PatternKind.LOOP,
        template="loop: tool web_search called 9 times with identical arguments",
        count=3,
        run_ids=["run-9418aaf995aa"],
        run_count=1,
        agents=["coder"],
        first_seen=FROZEN_NS - 60 * NS,
        last_seen=FROZEN_NS,
        trend=[0] * 30,
        samples=[],
        new=True,
    )
    return dataclasses.replace(report, patterns=[loop, *report.patterns])


class Signals(Backend):
    """Adds a loop signal to the failure patterns after the first report."""

    reports = 0

    async def failure_patterns(
        self,
        start_ns: int,
        end_ns: int,
        *,
        agent: str | None = None,
        run_id: str | None = None,
        buckets: int = 30,
        tenant: str = DEFAULT_TENANT,
    ) -> PatternReport:
        report = await super().failure_patterns(
            start_ns, end_ns, agent=agent, run_id=run_id, buckets=buckets, tenant=tenant
        )
        if run_id is None:
            self.reports += 1
            if self.reports > 1:
                report = _signal(report)
        return report


async def test_new_signal_rings_the_bell_once_and_shows_a_banner(tmp_path: Path) -> None:
    async with running(tmp_path, cls=Signals) as (app, pilot):
        dash = app.dashboard
        assert app.bells == 0  # the first report is the baseline
        dash.refresh_patterns()
        await wait_for(pilot, lambda: "Agent failure signal" in screen_text(app), "banner")
        assert "loop: tool web_search" in screen_text(app)
        assert app.bells == 1
        dash.refresh_patterns()
        await pilot.pause(0.3)
        assert app.bells == 1  # once per new pattern, not per refresh
        await pilot.press("escape")
        assert "Agent failure signal" not in screen_text(app)


async def test_bell_and_banner_follow_the_settings(tmp_path: Path) -> None:
    async with running(tmp_path, cls=Signals, bell=False, banner=False) as (app, pilot):
        app.dashboard.refresh_patterns()
        await wait_for(
            pilot,
            lambda: any(p.kind == PatternKind.LOOP for p in app.dashboard.patterns.table.patterns),
            "the signal in the table",
        )
        await pilot.pause(0.1)
        assert app.bells == 0
        assert "Agent failure signal" not in screen_text(app)


async def test_selecting_a_pattern_filters_the_runs(tmp_path: Path) -> None:
    async with running(tmp_path) as (app, pilot):
        dash = app.dashboard
        await pilot.press("3")
        table = dash.patterns.table
        assert len(table.patterns) > 5
        await pilot.press("j", "enter")
        pattern = table.patterns[1]
        assert dash.active_pane == "tasks"
        await wait_for(
            pilot,
            lambda: bool(dash.table.keys) and set(dash.table.keys) <= set(pattern.run_ids),
            "pattern runs",
        )
        assert len(dash.table.keys) == min(len(pattern.run_ids), 50)
        assert "pattern: #2" in screen_text(app)
        await pilot.press("x")
        await wait_for(pilot, lambda: len(dash.table.keys) == 50)


class NoPatterns(Backend):
    """A backend from before `failure_patterns` existed."""

    def __getattribute__(self, name: str) -> object:
        if name == "failure_patterns":
            raise AttributeError(name)
        return super().__getattribute__(name)


async def test_runs_without_failure_patterns_in_the_backend(tmp_path: Path) -> None:
    async with running(tmp_path, cls=NoPatterns, size=(160, 48)) as (app, pilot):
        await pilot.press("3")
        assert "need a newer backend" in screen_text(app)
        await pilot.press("1", "enter")
        await wait_for(pilot, lambda: "patterns need a newer backend" in screen_text(app), "note")
