"""Terminals: NO_COLOR, and the app exits when its terminal goes away (SSH dropped) instead of
spinning. The last test runs the real entry point (`tui.app.run`, with the demo fleet) on a
pseudo-terminal and hangs it up."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
from test_tui_support import frozen_clock, make_settings, running, seeded_backend, use_utc, wait_for
from textual.filter import Monochrome

from tui.app import AgentlogApp

ROOT = Path(__file__).resolve().parent.parent


async def test_no_color_turns_the_screen_monochrome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    use_utc()
    backend = await seeded_backend(tmp_path)
    app = AgentlogApp(make_settings(tmp_path), backend=backend, clock=frozen_clock)
    try:
        assert app.no_color
        assert any(isinstance(f, Monochrome) for f in app.get_line_filters())
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.dashboard.table.row_count > 0, "rows")
            assert app.dashboard.table.row_count > 0  # glyphs, not colours, carry the status
    finally:
        await backend.close()


async def test_a_hung_up_stdin_makes_the_app_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master, slave = pty.openpty()
    os.close(master)  # the other end of the terminal is gone

    class DeadTerminal:
        def fileno(self) -> int:
            return slave

    try:
        async with running(tmp_path) as (app, pilot):
            monkeypatch.setattr(sys, "__stdin__", DeadTerminal())
            app._check_terminal()
            await pilot.pause()
            assert app.return_code == 129
    finally:
        os.close(slave)


def _read_until(fd: int, needle: bytes, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while needle not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out


def test_run_with_the_demo_fleet_then_hang_up(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from backend.config import Settings\n"
        "from tui.app import run\n"
        "sys.exit(run(Settings(data_dir=sys.argv[1], demo={'seed': 3}), demo=True))\n"
    )
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    pid, master = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execve(sys.executable, [sys.executable, "-c", code, str(tmp_path)], env)
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        out = _read_until(master, b"failed", 20)
        assert b"agentlog" in out and b"demo fleet" in out, out[-2000:]
    finally:
        os.close(master)  # hang up: the terminal goes away
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the app kept running after its terminal went away")
    assert status is not None
    assert os.WIFEXITED(status) or os.WTERMSIG(status) == signal.SIGHUP
    logs = list((tmp_path / "logs").glob("error-*.log"))
    assert logs and "terminal went away" in logs[0].read_text()
    assert (tmp_path / "logs.sqlite3").exists()  # the demo fleet wrote to the store


def test_background_messages_after_the_screens_are_gone_do_not_crash(tmp_path: Path) -> None:
    """A health probe or a triage result can land while the app starts or shuts down, when no
    dashboard is on the screen stack: the handlers skip, they do not raise (this crashed once)."""
    app = AgentlogApp(make_settings(tmp_path), clock=frozen_clock)
    assert app.maybe_dashboard() is None
    app.status_changed()
    app.dashboard_ready()
