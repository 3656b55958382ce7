"""The ASGI app of the HTTP port: `create_app(backend)`.

The app is a FastAPI object made of routers. Today it mounts the Loki-compatible API
(`backend.http.loki_api`); the JSON API, auth and metrics plug in the same way, either passed as
`routers=` or included afterwards with `app.include_router(...)`. Route code reaches the facade
and the limits through `context_of(request_or_websocket)`; the app does not own the Backend (who
opened it closes it: `backend.http.serve.serve`, or a test fixture).

Responses are gzipped when the client sends `Accept-Encoding: gzip` (Starlette's GZipMiddleware;
bodies under 500 bytes go as they are).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection

from .. import __version__
from ..facade import Backend
from ..models import DEFAULT_TENANT
from .push_decode import PushLimits

__all__ = ["AppContext", "TailLimits", "backend_of", "context_of", "create_app"]


@dataclass(frozen=True, slots=True)
class TailLimits:
    """Loki's tail limits: `tail_max_duration` and `max_concurrent_tail_requests` (per tenant).
    The 1 s keepalive ping is the server's (`uvicorn.Config(ws_ping_interval=1.0)`)."""

    max_duration_s: float = 3600.0
    max_per_tenant: int = 10


@dataclass(slots=True)
class AppContext:
    """What the routes share: the facade, the limits, and a little state."""

    backend: Backend
    push: PushLimits = field(default_factory=PushLimits)
    tail: TailLimits = field(default_factory=TailLimits)
    default_tenant: str = DEFAULT_TENANT  # without X-Scope-OrgID (embedded.tenant_default)
    ready: bool = False  # true between lifespan startup and shutdown (or `serve`'s signal)
    active_tails: dict[str, int] = field(default_factory=dict)  # per tenant


def context_of(conn: HTTPConnection) -> AppContext:
    ctx = conn.app.state.agentlog
    assert isinstance(ctx, AppContext)
    return ctx


def backend_of(conn: HTTPConnection) -> Backend:
    return context_of(conn).backend


def create_app(
    backend: Backend,
    *,
    routers: Sequence[APIRouter] = (),
    push_limits: PushLimits | None = None,
    tail_limits: TailLimits | None = None,
) -> FastAPI:
    """The app serving `backend`: the Loki API, plus any extra `routers`."""
    from . import loki_api  # imported here: it imports this module for `context_of`

    ctx = AppContext(
        backend=backend,
        push=push_limits or PushLimits(),
        tail=tail_limits or TailLimits(),
        default_tenant=backend.settings.embedded.tenant_default or DEFAULT_TENANT,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.ready = True
        try:
            yield
        finally:
            ctx.ready = False

    app = FastAPI(
        title="agentlog",
        version=__version__,
        summary="The agentlog HTTP port: a Loki-compatible push and query API over the backend.",
        lifespan=lifespan,
    )
    app.state.agentlog = ctx
    app.add_middleware(GZipMiddleware, minimum_size=500)
    app.include_router(loki_api.router)
    for router in routers:
        app.include_router(router)
    return app
