"""`agentlog serve`: the HTTP port, run with uvicorn inside the caller's event loop.

    await serve(settings, host="127.0.0.1", port=3100)

Opens the Backend (unless one is given: then the caller keeps owning it), listens, serves until
SIGINT or SIGTERM, then shuts down gracefully (open connections get a few seconds; a second
Ctrl-C forces it) and closes the Backend. Returns normally after a signal: the signal is not
re-raised, so the caller's clean-exit path runs.

Safety: the HTTP port has no authentication yet, so it refuses to listen on anything but a
loopback address unless `server.jwt_secret` is set to a real secret (at least 32 characters, not
a placeholder). The refusal is a `UsageError` whose message says what to do.

WebSocket keepalive: uvicorn pings every second (Loki's tail does), and gives up on a client that
has not answered a ping within 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator

import uvicorn

from ..config import Settings
from ..errors import UsageError
from ..facade import Backend
from .app import create_app

__all__ = [
    "DEFAULT_PORT",
    "MIN_SECRET_LENGTH",
    "Server",
    "check_bind",
    "is_loopback",
    "serve",
    "uvicorn_config",
]

DEFAULT_PORT = 3100  # Loki's: ordinary Loki clients push here without being told otherwise
MIN_SECRET_LENGTH = 32
WS_PING_INTERVAL_S = 1.0
WS_PING_TIMEOUT_S = 20.0
GRACEFUL_SHUTDOWN_S = 5
_PLACEHOLDER_SECRETS = frozenset(
    {"", "changeme", "change-me", "change_me", "secret", "default", "jwt_secret", "jwt-secret",
     "your-secret", "your_secret", "yoursecret", "please-change-me", "test", "password"}
)  # fmt: skip


def is_loopback(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost" or name.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


def _secret_ok(secret: str) -> bool:
    s = secret.strip()
    return len(s) >= MIN_SECRET_LENGTH and s.lower() not in _PLACEHOLDER_SECRETS and len(set(s)) > 4


def check_bind(host: str, settings: Settings) -> None:
    """Refuse a non-loopback address while the port has no real secret (see module doc)."""
    if is_loopback(host) or _secret_ok(settings.server.jwt_secret):
        return
    raise UsageError(
        f"refusing to listen on {host!r}: it is reachable from other machines and this HTTP port "
        "has no authentication yet. Listen on 127.0.0.1 (the default), or set server.jwt_secret "
        f"(env JWT_SECRET or AGENTLOG_SERVER__JWT_SECRET) to a random secret of at least "
        f"{MIN_SECRET_LENGTH} characters, e.g. the output of `openssl rand -hex 32`."
    )


class Server(uvicorn.Server):
    """uvicorn's Server with signal handling that suits a library call: SIGINT/SIGTERM ask for a
    graceful stop (a second SIGINT forces it), `on_stop` runs first (the app reports not ready),
    and nothing is re-raised afterwards. Handlers are installed only in the main thread."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        installed: list[int] = []
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, self.request_stop, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            yield
        finally:
            running = asyncio.get_running_loop()
            for signum in installed:
                running.remove_signal_handler(signum)

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        if self._on_stop is not None:
            self._on_stop()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def uvicorn_config(app: object, *, log_level: str = "warning") -> uvicorn.Config:
    """The uvicorn settings of the HTTP port (also used by the tests' server fixture)."""
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        lifespan="on",
        log_config=None,  # leave the process's logging alone
        log_level=log_level,
        access_log=False,
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_TIMEOUT_S,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"cannot listen on {host}:{port}: the port is in use (another agentlog serve, or "
                "a Loki?); pick another with --port"
            ) from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    backend: Backend | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the HTTP port until SIGINT/SIGTERM (see module doc). `host`/`port` default to the
    settings (`server.host`, `server.port`, else 3100)."""
    host = host or settings.server.host
    port = port if port is not None else (settings.server.port or DEFAULT_PORT)
    check_bind(host, settings)
    sock = _listen(host, port)
    own = backend is None
    try:
        be = backend if backend is not None else await Backend.open(settings)
    except BaseException:
        sock.close()
        raise
    try:
        app = create_app(be)
        ctx = app.state.agentlog

        def not_ready() -> None:
            ctx.ready = False

        server = Server(uvicorn_config(app, log_level=log_level), on_stop=not_ready)
        bound_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"agentlog serve: listening on http://{shown}:{bound_port} "
            f"(Loki API: /loki/api/v1/push, /loki/api/v1/query_range, ...); Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        if own:
            await be.close()
