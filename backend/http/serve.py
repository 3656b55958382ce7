"""`agentlog serve`: the HTTP port, run with uvicorn inside the caller's event loop.

    await serve(settings, host="127.0.0.1", port=3100)

Opens the Backend (unless one is given: then the caller keeps owning it), listens, serves until
SIGINT or SIGTERM, then shuts down gracefully (open connections get a few seconds; a second
Ctrl-C forces it) and closes the Backend. Returns normally after a signal: the signal is not
re-raised, so the caller's clean-exit path runs.

Safety (auth.py): with `server.jwt_secret` set, every route but `/health` and `/ready` needs a
token or an API key. A secret that is set must be a real one (at least 32 characters, not a
placeholder), wherever the port listens. With no secret at all, authentication is off, and that
is allowed only on a loopback address: `serve` refuses any other address (a `UsageError` whose
message says what to do) and says on stderr that auth is off.

Shutdown: on SIGINT/SIGTERM the app reports not ready, open live tails (Loki and JSON) are closed
with code 1001 (going away), in-flight requests get a few seconds to finish, then the app's
lifespan closes what it owns (API key store, rate limiter, log files) and `serve` closes the
Backend (which flushes the store).

WebSocket keepalive: uvicorn pings every second (Loki's tail does), and gives up on a client that
has not answered a ping within 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator

import uvicorn

from ..config import Settings
from ..errors import UsageError
from ..facade import Backend, settle_heap
from .app import create_app
from .auth import MIN_SECRET_LENGTH, secret_problem, weak_secret_message

__all__ = [
    "DEFAULT_PORT",
    "MIN_SECRET_LENGTH",
    "Server",
    "check_bind",
    "is_loopback",
    "serve",
    "tcp_listener",
    "uvicorn_config",
]

DEFAULT_PORT = 3100  # Loki's: ordinary Loki clients push here without being told otherwise
WS_PING_INTERVAL_S = 1.0
WS_PING_TIMEOUT_S = 20.0
GRACEFUL_SHUTDOWN_S = 5


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


def check_bind(host: str, settings: Settings) -> bool:
    """Refuse to start with a weak secret, or with none on a non-loopback address (see module
    doc). Returns whether authentication will be on."""
    secret = settings.server.jwt_secret
    if secret:
        problem = secret_problem(secret)
        if problem is not None:
            raise UsageError(f"refusing to start: {weak_secret_message(problem)}")
        return True
    if is_loopback(host):
        return False
    raise UsageError(
        f"refusing to listen on {host!r} without authentication: it is reachable from other "
        "machines. Listen on 127.0.0.1 (the default), or set server.jwt_secret (env JWT_SECRET "
        f"or AGENTLOG_SERVER__JWT_SECRET) to a random secret of at least {MIN_SECRET_LENGTH} "
        "characters, e.g. the output of `openssl rand -hex 32`."
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
        # As Loki's tail: no permessage-deflate. Compression state is per socket, so a frame
        # sent to 200 tails would be compressed 200 times (bench/tail_ws.py).
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        server_header=False,
    )


def tcp_listener(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket for uvicorn's `sockets=`.

    Made with proto=IPPROTO_TCP on purpose: asyncio sets TCP_NODELAY only on accepted sockets
    whose proto says TCP, and `socket.create_server` leaves proto 0. Without TCP_NODELAY every
    response written in two parts (headers, then body) waits for the client's delayed ACK:
    about 40 ms per request on Linux loopback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen(host: str, port: int) -> socket.socket:
    try:
        sock = tcp_listener(host.strip("[]"), port)
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
    index_from: str | None = None,
) -> None:
    """Serve the HTTP port until SIGINT/SIGTERM (see module doc). `host`/`port` default to the
    settings (`server.host`, `server.port`, else 3100). `index_from`: a LogQL selector whose
    lines (pushed to the log source directly, e.g. to Loki) are followed to keep the task
    table current, resuming after restarts (backend.follow)."""
    host = host or settings.server.host
    port = port if port is not None else (settings.server.port or DEFAULT_PORT)
    auth_on = check_bind(host, settings)
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
            ctx.stopping.set()  # live tails close with 1001 instead of holding the shutdown

        server = Server(uvicorn_config(app, log_level=log_level), on_stop=not_ready)
        settle_heap()
        bound_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        auth_note = (
            "auth on: send a token (agentlog token) or an API key (agentlog apikey create)"
            if auth_on
            else "auth OFF (no server.jwt_secret; loopback only): every caller is an admin"
        )
        print(
            f"agentlog serve: listening on http://{shown}:{bound_port} (JSON API /api/..., "
            f"/metrics, OTLP /v1/logs, Loki API /loki/api/v1/...); {auth_note}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        follower: asyncio.Task[object] | None = None
        stop_follow = asyncio.Event()
        if index_from:
            from ..follow import follow_and_index

            state = settings.data_dir / "index-from-loki.json"
            follower = asyncio.create_task(
                follow_and_index(be, index_from, state, stop=stop_follow), name="index-from"
            )
        try:
            await server.serve(sockets=[sock])
        finally:
            if follower is not None:
                stop_follow.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(follower, 5)
    finally:
        sock.close()
        if own:
            await be.close()
