"""A real HTTP server for tests: an ASGI app run by uvicorn on 127.0.0.1, on a free port, inside
the test's own event loop (so the test can also call the Backend directly).

    async with run_server(create_app(backend)) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client: ...
        async with websockets.connect(srv.ws_url + "/loki/api/v1/tail?...") as ws: ...

The socket is bound before the server starts (port 0: the kernel picks a free port, no race),
and the server uses the same uvicorn settings as `agentlog serve` (1 s WebSocket pings).
Leaving the block stops the server gracefully; open connections get a few seconds.

`backend_at(tmp_path)` opens an embedded Backend with its files under `tmp_path`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.config import load_config
from backend.facade import Backend
from backend.http.serve import Server, tcp_listener, uvicorn_config

__all__ = ["RunningServer", "backend_at", "run_server"]


@dataclass(slots=True)
class RunningServer:
    host: str
    port: int
    server: Server

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


@asynccontextmanager
async def run_server(
    app: Any, *, host: str = "127.0.0.1", startup_timeout: float = 10.0
) -> AsyncIterator[RunningServer]:
    sock = tcp_listener(host, 0)
    server = Server(uvicorn_config(app))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        async with asyncio.timeout(startup_timeout):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError("the server stopped before it started")
                await asyncio.sleep(0.005)
        yield RunningServer(host, sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(15):
                await task
        except TimeoutError:
            task.cancel()
        finally:
            sock.close()


async def backend_at(tmp_path: Path, overrides: Mapping[str, object] | None = None) -> Backend:
    settings = load_config(
        None, env={}, overrides={"data_dir": str(tmp_path), **(overrides or {})}
    ).settings
    return await Backend.open(settings)
