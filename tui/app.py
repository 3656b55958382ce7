"""The agentlog Textual app and `run`, the CLI's entry point (`agentlog`, `agentlog --demo`).

The app opens the backend inside its own event loop (or takes an open one, for tests), runs the
demo fleet in-process with `--demo` (an hour of history at once, then live), polls the source's
health, and closes everything on exit. Its own log goes to `<data_dir>/logs/error-*.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import ClassVar

from textual import on
from textual.app import App
from textual.binding import BindingType
from textual.dom import DOMNode
from textual.screen import Screen
from textual.types import CSSPathType

from backend.config import Settings
from backend.demo.fleet import FleetOptions, run_fleet
from backend.errors import InvalidTransition, UsageError
from backend.facade import Backend, settle_heap
from backend.models import Task, TriageState

from .bindings import bindings_for, unknown_ids
from .clock import Clock, system_clock
from .commands import AgentlogCommands
from .logfiles import setup_file_logging
from .messages import (
    BackendReady,
    ComponentFailed,
    ComponentRecovered,
    DemoLive,
    HealthProbed,
    TriageDone,
)
from .paths import css_paths
from .screens.dashboard import DashboardScreen
from .screens.help import HelpScreen
from .screens.note import NoteScreen
from .screens.run_detail import RunDetailScreen
from .screens.time_range import TimeRangeScreen
from .status import SourceStatus, describe
from .timerange import TimeRange
from .widgets.status_header import StatusHeader

__all__ = ["AgentlogApp", "run"]

log = logging.getLogger("agentlog.tui")

DEMO_BACKFILL_S = 3600.0
DEMO_FOREVER_S = 100 * 365 * 86400.0  # "live until quit"
HEALTH_EVERY_S = 2.0
REOPEN_EVERY_S = 5.0
HANGUP_CHECK_S = 0.5

OpenBackend = Callable[[], Awaitable[Backend]]


class AgentlogApp(App[int]):
    """The dashboard. Tests pass an open `backend` (or an `open_backend` factory) and a `clock`."""

    CSS_PATH: ClassVar[CSSPathType | None] = [*css_paths()]
    TITLE = "agentlog"
    BINDINGS: ClassVar[list[BindingType]] = [*bindings_for("app")]
    COMMANDS = App.COMMANDS | {AgentlogCommands}

    def __init__(
        self,
        settings: Settings,
        *,
        demo: bool = False,
        backend: Backend | None = None,
        open_backend: OpenBackend | None = None,
        clock: Clock = system_clock,
        demo_options: FleetOptions | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.demo = demo
        self.backend: Backend | None = backend
        self._owns_backend = backend is None
        self._open_backend: OpenBackend = open_backend or (lambda: Backend.open(settings))
        self.now: Clock = clock
        self.time_range = TimeRange(settings.tui.time_range)
        self.status = SourceStatus()
        self.keymap: dict[str, str] = dict(settings.tui.keys)
        self.bells = 0
        self.demo_options = demo_options
        self.demo_live = asyncio.Event()
        self._undo: list[tuple[str, TriageState, str]] = []
        self._fleet: asyncio.Task[object] | None = None
        self._health_inflight = False
        self._hangup_installed = False
        self.set_keymap(self.keymap)

    # ------------------------------------------------------------------ screens

    def get_default_screen(self) -> Screen[None]:
        return DashboardScreen()

    @property
    def dashboard(self) -> DashboardScreen:
        dash = self.maybe_dashboard()
        if dash is None:
            raise LookupError("no dashboard")
        return dash

    def maybe_dashboard(self) -> DashboardScreen | None:
        """The dashboard, or None while the app is starting or shutting down (the screen
        stack is empty then): background messages may still arrive."""
        for screen in self.screen_stack:
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    def action_targets(self, screen: Screen[object]) -> dict[str, DOMNode]:
        """Where the actions of each binding scope run, on `screen` (for the palette)."""
        targets: dict[str, DOMNode] = {"app": self}
        if isinstance(screen, DashboardScreen):
            targets.update(
                dashboard=screen,
                tasks=screen.table,
                lines=screen.tail.view,
                patterns=screen.patterns.table,
                summary=screen.summary,
            )
        elif isinstance(screen, RunDetailScreen):
            from .widgets.line_view import LineView
            from .widgets.summary_pane import SummaryPane

            targets.update(
                detail=screen,
                lines=screen.query_one(LineView),
                summary=screen.query_one(SummaryPane),
            )
        return targets

    # ------------------------------------------------------------------ lifecycle

    def on_mount(self) -> None:
        self._apply_theme()
        unknown = unknown_ids(self.keymap)
        if unknown:
            msg = (
                f"tui.keys: unknown binding id(s) {', '.join(unknown)}; press ? for the list of ids"
            )
            log.warning(msg)
            self.notify(msg, severity="warning", markup=False, timeout=8)
        self.set_interval(HEALTH_EVERY_S, self._poll_health, name="health")
        self._install_hangup()
        if self.backend is not None:
            self.post_message(BackendReady(self.backend))
        else:
            self.run_worker(self._open(), group="open", exit_on_error=False)

    def _apply_theme(self) -> None:
        name = self.settings.tui.theme
        if name in self.available_themes:
            self.theme = name
        else:
            msg = f"tui.theme: unknown theme {name!r}; using textual-dark"
            log.warning(msg)
            self.notify(msg, severity="warning", markup=False)

    async def _open(self) -> None:
        while self.backend is None:
            try:
                backend = await self._open_backend()
            except asyncio.CancelledError:
                raise
            except UsageError as exc:  # a setting to fix: retrying cannot help
                log.error("the backend cannot open: %s", exc)
                self.post_message(ComponentFailed("open", f"{describe(exc)} (fix the setting)"))
                return
            except Exception as exc:
                log.warning("opening the backend failed", exc_info=True)
                self.post_message(ComponentFailed("open", describe(exc)))
                await asyncio.sleep(REOPEN_EVERY_S)
                continue
            self.post_message(BackendReady(backend))
            return

    @on(BackendReady)
    def _backend_ready(self, message: BackendReady) -> None:
        self.backend = message.backend
        self._recovered("open")
        self.dashboard_ready()
        settle_heap()  # started: keep full GC passes (and their pauses) off the startup heap
        # the first `s` should not pay for importing the AI client
        self.run_worker(message.backend.warm_up(), group="warm", exit_on_error=False)

    def dashboard_ready(self) -> None:
        """Start the dashboard once both it (mounted) and the backend (open) are ready."""
        dash = self.maybe_dashboard()
        if self.backend is None or dash is None or not dash.mounted or dash.started:
            return
        self.refresh_header(dash.header)
        dash.start(tail=not self.demo)
        if self.demo and self._fleet is None:
            self._fleet = asyncio.create_task(self._run_fleet(self.backend))

    async def _run_fleet(self, backend: Backend) -> None:
        d = self.settings.demo
        opts = self.demo_options or FleetOptions(
            agents=d.agents,
            rate=d.rate,
            seed=d.seed,
            backfill_s=DEMO_BACKFILL_S,
            duration_s=DEMO_FOREVER_S,
        )
        live = False

        async def sleep(seconds: float) -> None:
            nonlocal live
            if not live:  # the first sleep comes after the backfill: the fleet is live now
                live = True
                self.post_message(DemoLive())
            await asyncio.sleep(seconds)

        try:
            await run_fleet(backend.push, opts, sleep=sleep)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("the demo fleet stopped", exc_info=True)
            self.notify(f"demo fleet stopped: {describe(exc)}", severity="error", markup=False)
        if not live:
            self.post_message(DemoLive())

    @on(DemoLive)
    def _demo_live(self) -> None:
        self.demo_live.set()
        dash = self.maybe_dashboard()
        if dash is None:
            return
        dash.restart_tail()
        dash.refresh_tasks(force=True)
        dash.refresh_patterns()

    async def on_unmount(self) -> None:
        self._remove_hangup()
        if self._fleet is not None:
            self._fleet.cancel()
            with contextlib.suppress(BaseException):
                await self._fleet
        if self.backend is not None and self._owns_backend:
            try:
                await self.backend.close()
            except Exception:
                log.warning("closing the backend failed", exc_info=True)

    def _handle_exception(self, error: Exception) -> None:
        log.error("unhandled error in the dashboard", exc_info=error)
        super()._handle_exception(error)

    # ------------------------------------------------------------------ terminal gone

    def _install_hangup(self) -> None:
        """Exit (cleanly) when the terminal goes away: SIGHUP, or a hung-up stdin."""
        if self.is_headless or sys.platform == "win32":
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._hangup)
            self._hangup_installed = True
        self.set_interval(HANGUP_CHECK_S, self._check_terminal, name="hangup")

    def _remove_hangup(self) -> None:
        if self._hangup_installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._hangup_installed = False

    def _hangup(self) -> None:
        log.warning("the terminal went away (hangup): exiting")
        self.exit(return_code=129)

    def _check_terminal(self) -> None:
        stdin = sys.__stdin__
        if stdin is None:
            return
        try:
            poller = select.poll()
            poller.register(stdin.fileno(), select.POLLIN)
            events = poller.poll(0)
        except (OSError, ValueError):
            self._hangup()
            return
        if any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in events):
            self._hangup()

    # ------------------------------------------------------------------ health

    def _poll_health(self) -> None:
        if self.backend is None or self._health_inflight:
            return
        self._health_inflight = True
        self.run_worker(self._health(self.backend), group="health", exit_on_error=False)

    async def _health(self, backend: Backend) -> None:
        try:
            probes = await backend.health()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.post_message(ComponentFailed("health", describe(exc)))
            return
        finally:
            self._health_inflight = False
        self.post_message(ComponentRecovered("health"))
        self.post_message(HealthProbed(probes))

    @on(HealthProbed)
    def _probed(self, message: HealthProbed) -> None:
        if self.status.set_probes(message.probes):
            self.status_changed()

    @on(ComponentFailed)
    def _failed(self, message: ComponentFailed) -> None:
        if self.status.fail(message.component, message.reason):
            self.status_changed()

    @on(ComponentRecovered)
    def _on_recovered(self, message: ComponentRecovered) -> None:
        self._recovered(message.component)

    def _recovered(self, component: str) -> None:
        if self.status.succeed(component, self.now()):
            self.status_changed()

    def status_changed(self) -> None:
        """Show the source's state in the header and the banner (once the dashboard is up)."""
        dash = self.maybe_dashboard()
        if dash is None or not dash.mounted:
            return
        self.refresh_header(dash.header)
        dash.show_status(self.status.reasons(), self.status.last_good_ns)

    def refresh_header(self, header: StatusHeader) -> None:
        if self.backend is not None:
            header.source = self.backend.describe_source()
        header.health = self.status.state
        header.range_label = self.time_range.label
        header.extra = "demo fleet" if self.demo else ""

    def ring_bell(self) -> None:
        """Ring once (counted, so tests can see it)."""
        self.bells += 1
        self.bell()

    # ------------------------------------------------------------------ actions

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap))

    def pick_time_range(self) -> None:
        def chosen(tr: TimeRange | None) -> None:
            if tr is not None and tr != self.time_range:
                self.set_time_range(tr)

        self.push_screen(TimeRangeScreen(self.time_range), chosen)

    def set_time_range(self, tr: TimeRange) -> None:
        self.time_range = tr
        self.dashboard.range_changed()

    def open_run(self, task: Task, *, first_error: bool = False) -> None:
        screen = RunDetailScreen(task, first_error=first_error)
        if isinstance(self.screen, RunDetailScreen):
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def go_to_run(self, run_id: str) -> None:
        self.run_worker(self._go_to_run(run_id), group="goto", exit_on_error=False)

    async def _go_to_run(self, run_id: str) -> None:
        if self.backend is None:
            return
        try:
            task = await self.backend.get_task(run_id)
        except Exception as exc:
            self.notify(describe(exc), severity="error", markup=False)
            return
        self.dashboard.table.select_run(task.run_id)
        self.open_run(task)

    # ------------------------------------------------------------------ triage

    def triage(self, task: Task, state: TriageState, note: str | None = None) -> None:
        """Set a run's triage state (ignore asks for an optional note first)."""
        if state == TriageState.IGNORED and note is None:

            def noted(text: str | None) -> None:
                if text is not None:
                    self.triage(task, state, text)

            self.push_screen(NoteScreen("Ignore run", task.run_id), noted)
            return
        self.run_worker(
            self._set_triage(task.run_id, state, note or "", task.triage, task.triage_note, False),
            group="triage",
            exit_on_error=False,
        )

    def undo_triage(self) -> None:
        if not self._undo:
            self.notify("Nothing to undo.", markup=False)
            return
        run_id, previous, note = self._undo.pop()
        self.run_worker(
            self._set_triage(run_id, previous, note, previous, note, True),
            group="triage",
            exit_on_error=False,
        )

    async def _set_triage(
        self,
        run_id: str,
        state: TriageState,
        note: str,
        previous: TriageState,
        previous_note: str,
        undo: bool,
    ) -> None:
        if self.backend is None:
            return
        try:
            task = await self.backend.set_triage(
                run_id, state, by=self.settings.tui.user or "tui", note=note
            )
        except InvalidTransition as exc:
            what = "Cannot undo" if undo else "Cannot triage"
            self.notify(f"{what}: {exc}", severity="warning", markup=False, timeout=6)
            return
        except Exception as exc:
            log.warning("triage of %s failed", run_id, exc_info=True)
            self.notify(f"Triage failed: {describe(exc)}", severity="error", markup=False)
            return
        self.post_message(TriageDone(task, previous, previous_note, undo))

    @on(TriageDone)
    def _triaged(self, message: TriageDone) -> None:
        task = message.task
        if not message.undo and task.triage != message.previous:
            self._undo.append((task.run_id, message.previous, message.previous_note))
        if message.undo:
            text = f"Undone: run {task.run_id} is {task.triage.value} again."
        else:
            text = f"Run {task.run_id} {task.triage.value}. u undoes."
        self.notify(text, markup=False, timeout=4)
        dash = self.maybe_dashboard()
        if dash is not None:
            dash.task_changed(task)
        for screen in self.screen_stack:
            if isinstance(screen, RunDetailScreen) and screen.run_info.run_id == task.run_id:
                screen.show_task(task)


def run(settings: Settings, *, demo: bool = False) -> int:
    """Run the dashboard until the user quits (the CLI's default verb). Returns the exit code."""
    handler = setup_file_logging(settings.data_dir)
    try:
        app = AgentlogApp(settings, demo=demo)
        app.run()
        return app.return_code or 0
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
