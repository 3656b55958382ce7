"""Shared helpers of the TUI tests: a seeded demo store under a frozen clock, and a way to read
what the screen shows. (Named test_tui_* so it sits with the TUI tests; its own tests check that
the seeded store is what the other tests expect.)"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from backend.config import Settings
from backend.demo.fleet import FleetOptions, run_fleet
from backend.embedded.logstore import EmbeddedLogStore
from backend.embedded.tasks import SqliteTaskStore
from backend.facade import Backend
from backend.models import RunStatus
from tui.app import AgentlogApp

NS = 1_000_000_000
FROZEN_NS = 1_741_089_600 * NS  # 2025-03-04 12:00:00 UTC
SEED = 7


def frozen_clock() -> int:
    return FROZEN_NS


def use_utc() -> None:
    """Times on screen are local: pin the zone so snapshots do not depend on the machine."""
    os.environ["TZ"] = "UTC"
    time.tzset()


def make_settings(data_dir: Path, **tui: object) -> Settings:
    # retention 0: the seeded lines are dated 2025 (the frozen clock); keep them
    return Settings(data_dir=data_dir, embedded={"retention": 0}, tui={"user": "oncall", **tui})


async def open_backend(
    data_dir: Path, clock: Callable[[], int] = frozen_clock, cls: type[Backend] = Backend
) -> Backend:
    """The backend as `agentlog` opens it, with its stores on `clock` (stall detection and the
    tail's window follow the store's clock)."""
    backend = await cls.open(make_settings(data_dir))
    assert isinstance(backend.logs, EmbeddedLogStore)
    assert isinstance(backend.tasks, SqliteTaskStore)
    backend.logs._clock = clock
    backend.tasks._clock = clock
    return backend


_SEEDED: Path | None = None


async def _build_seed() -> Path:
    global _SEEDED
    if _SEEDED is None or not (_SEEDED / "logs.sqlite3").exists():
        base = Path(tempfile.mkdtemp(prefix="agentlog-tui-seed-"))
        atexit.register(shutil.rmtree, base, True)
        backend = await open_backend(base)
        try:
            await run_fleet(
                backend.push,
                FleetOptions(agents=8, rate=2.0, seed=SEED, backfill_s=3600),
                clock=frozen_clock,
            )
        finally:
            await backend.close()
        _SEEDED = base
    return _SEEDED


async def seeded_dir(dest: Path) -> Path:
    """`dest` filled with a copy of the seeded demo store (an hour of 8 agents, seed 7, ending
    at FROZEN_NS). Built once per test process."""
    src = await _build_seed()

    def copy() -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("logs.sqlite3", "tasks.sqlite3"):
            shutil.copy(src / name, dest / name)

    await asyncio.to_thread(copy)
    return dest


async def seeded_backend(
    dest: Path, clock: Callable[[], int] = frozen_clock, cls: type[Backend] = Backend
) -> Backend:
    return await open_backend(await seeded_dir(dest), clock, cls)


class MovingClock:
    """A clock the test moves by hand."""

    def __init__(self, start: int = FROZEN_NS) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    size: tuple[int, int] = (80, 24),
    backend: Backend | None = None,
    clock: Callable[[], int] = frozen_clock,
    cls: type[Backend] = Backend,
    loaded: bool = True,
    **tui: object,
) -> AsyncIterator[tuple[AgentlogApp, Pilot[int]]]:
    """The app on a seeded store, at 80x24 by default, started and loaded."""
    use_utc()
    if backend is None:
        backend = await seeded_backend(tmp_path, clock, cls)
    app = AgentlogApp(make_settings(tmp_path, **tui), backend=backend, clock=clock)
    try:
        async with app.run_test(size=size) as pilot:
            if loaded:
                await wait_loaded(pilot)
            yield app, pilot
    finally:
        await backend.close()


class FixedPathBackend(Backend):
    """The real backend, naming its store with a fixed path (snapshots must not show tmp dirs)."""

    def describe_source(self) -> str:
        return "embedded: /var/lib/agentlog/logs.sqlite3"


def seeded_app(data_dir: Path, **tui: object) -> AgentlogApp:
    """An app that opens a seeded store itself, inside its own event loop (for snapshots)."""
    use_utc()
    asyncio.run(seeded_dir(data_dir))
    return AgentlogApp(
        make_settings(data_dir, **tui),
        open_backend=lambda: open_backend(data_dir, cls=FixedPathBackend),
        clock=frozen_clock,
    )


def screen_lines(app: AgentlogApp) -> list[str]:
    """The text of every row of the screen, as it would be sent to the terminal."""
    strips = app.screen._compositor.render_strips()
    return ["".join(seg.text for seg in strip) for strip in strips]


def screen_text(app: AgentlogApp) -> str:
    return "\n".join(screen_lines(app))


async def wait_for(
    pilot: Pilot[object], cond: Callable[[], bool], what: str = "", seconds: float = 5.0
) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.02)


async def wait_loaded(pilot: Pilot[object]) -> None:
    app = pilot.app
    assert isinstance(app, AgentlogApp)
    await asyncio.wait_for(app.dashboard.loaded.wait(), 10)
    await wait_for(pilot, lambda: app.dashboard.tasks_settled, "runs on screen")
    await pilot.pause()


# ---------------------------------------------------------------- the seeded store itself


async def test_seeded_store_is_deterministic(tmp_path: Path) -> None:
    backend = await seeded_backend(tmp_path / "a")
    try:
        page = await backend.list_tasks(limit=5)
        assert [t.status for t in page.tasks][:1] != [RunStatus.SUCCEEDED]
        first = [t.run_id for t in page.tasks]
    finally:
        await backend.close()
    again = await seeded_backend(tmp_path / "b")
    try:
        assert [t.run_id for t in (await again.list_tasks(limit=5)).tasks] == first
    finally:
        await again.close()


@pytest.fixture
def utc() -> None:
    use_utc()
