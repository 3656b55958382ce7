"""The ASGI app of the HTTP port: `create_app(backend)`.

The app is a FastAPI object made of routers: the Loki-compatible API (`loki_api`), the JSON API,
`/health` and `/metrics` (`api`), OTLP ingestion (`otlp`), plus any extra `routers=`. Route code
reaches the facade, the limits, auth and metrics through `context_of(request_or_websocket)`; the
app does not own the Backend (who opened it closes it: `backend.http.serve.serve`, or a test
fixture). It does own what it makes itself: the API key store it opened, the rate limiter, the
log files; the lifespan closes them.

Security (auth.py, limits.py, security.py): JWT/API-key auth on every route but `/health`,
`/ready` and `/openapi.json` (off when there is no `server.jwt_secret`: see auth.py), rate limits
per identity and route, body limits, security headers, CORS only when configured, gzip responses,
and daily access/error logs under `<data_dir>/logs`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from starlette.requests import HTTPConnection

from .. import __version__
from ..apikeys import ApiKeyStore, SqliteApiKeyStore, default_path
from ..config import ServerSettings
from ..facade import Backend
from ..models import DEFAULT_TENANT
from .auth import Authenticator
from .limits import RateLimiter, RateLimits
from .metrics import HttpMetrics
from .push_decode import PushLimits
from .security import DailyLogs, install
from .wstail import FrameCache

__all__ = [
    "AppContext",
    "HttpOptions",
    "TailLimits",
    "backend_of",
    "context_of",
    "create_app",
]


@dataclass(frozen=True, slots=True)
class TailLimits:
    """Loki's tail limits: `tail_max_duration` and `max_concurrent_tail_requests` (per tenant).
    The 1 s keepalive ping is the server's (`uvicorn.Config(ws_ping_interval=1.0)`). `create_app`
    takes them from `server.tail_max_duration` and `server.max_tails_per_tenant`."""

    max_duration_s: float = 3600.0
    max_per_tenant: int = 10


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """How the port protects and records itself; every None means "from the settings".

    auth: on when a JWT secret is set (`server.jwt_secret`), off otherwise. jwt_secret: the
    settings' by default. apikeys: a store the caller owns; None opens the SQLite one in the data
    dir (closed with the app). rate_limits: `server.rate_limits`. limits_storage: "auto" (Redis
    when `redis.enabled`), "memory", or a Redis URL. cors_origins: `server.cors_origins`. logs:
    write the access and error logs to `log_dir` (default `<data_dir>/logs`). body_limit: the
    largest JSON API request body in bytes, `server.body_limit` (push routes have their own,
    `PushLimits.max_body_bytes`)."""

    auth: bool | None = None
    jwt_secret: str | None = None
    apikeys: ApiKeyStore | None = None
    rate_limits: RateLimits | None = None
    limits_storage: str = "auto"
    cors_origins: Sequence[str] | None = None
    logs: bool = True
    log_dir: Path | None = None
    body_limit: int | None = None


@dataclass(slots=True)
class AppContext:
    """What the routes share: the facade, the limits, auth, metrics and a little state."""

    backend: Backend
    auth: Authenticator
    limiter: RateLimiter
    metrics: HttpMetrics
    logs: DailyLogs | None = None
    push: PushLimits = field(default_factory=PushLimits)
    tail: TailLimits = field(default_factory=TailLimits)
    default_tenant: str = DEFAULT_TENANT  # without X-Scope-OrgID (embedded.tenant_default)
    ready: bool = False  # true between lifespan startup and shutdown (or `serve`'s signal)
    active_tails: dict[str, int] = field(default_factory=dict)  # per tenant
    tenants: set[str] = field(default_factory=set)  # seen by the guard (for /metrics)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown
    frames: FrameCache = field(default_factory=FrameCache)  # tail frames, encoded once
    task_writes: dict[str, int] = field(default_factory=dict)  # per tenant: in task list keys


_PLAIN: dict[str, object] = {"content": {"text/plain": {"schema": {"type": "string"}}}}
LOKI_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {
        "content": {
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "object"}},  # format_query answers JSON
        },
        "description": "Bad request (Loki's plain-text error)",
    },
    401: {"description": "No, expired or invalid credentials"},
    403: {"description": "The role is too low, or X-Scope-OrgID names another tenant"},
    404: {**_PLAIN, "description": "Not found"},
    413: {**_PLAIN, "description": "Body too large"},
    429: {"description": "Rate limit exceeded (see Retry-After)"},
    503: {**_PLAIN, "description": "Not ready, or a source is unavailable"},
}


def context_of(conn: HTTPConnection) -> AppContext:
    ctx = conn.app.state.agentlog
    assert isinstance(ctx, AppContext)
    return ctx


def backend_of(conn: HTTPConnection) -> Backend:
    return context_of(conn).backend


def _limits_redis_url(backend: Backend, storage: str) -> str | None:
    if storage == "memory":
        return None
    if storage == "auto":
        r = backend.settings.redis
        return r.url if r.enabled else None
    return storage


def _push_limits(server: ServerSettings) -> PushLimits:
    return PushLimits(
        max_body_bytes=server.push_body_limit, max_decoded_bytes=server.push_decoded_limit
    )


def _tail_limits(server: ServerSettings) -> TailLimits:
    return TailLimits(
        max_duration_s=server.tail_max_duration, max_per_tenant=server.max_tails_per_tenant
    )


def create_app(
    backend: Backend,
    *,
    routers: Sequence[APIRouter] = (),
    push_limits: PushLimits | None = None,
    tail_limits: TailLimits | None = None,
    options: HttpOptions | None = None,
) -> FastAPI:
    """The app serving `backend`: the Loki API, the JSON API, metrics, OTLP, plus `routers`.

    The limits not given here (`push_limits`, `tail_limits`, the rate and body limits of
    `options`) come from `backend.settings.server`."""
    from . import api, loki_api, otlp  # imported here: they import this module
    from .auth import loki_guard

    opts = options or HttpOptions()
    settings = backend.settings
    server = settings.server
    secret = server.jwt_secret if opts.jwt_secret is None else opts.jwt_secret
    enabled = bool(secret) if opts.auth is None else opts.auth
    own_keys = opts.apikeys is None
    keys = opts.apikeys or SqliteApiKeyStore(default_path(settings.data_dir))
    default_tenant = settings.embedded.tenant_default or DEFAULT_TENANT
    metrics = HttpMetrics(source=settings.log_source)
    logs = DailyLogs(opts.log_dir or settings.data_dir / "logs") if opts.logs else None
    ctx = AppContext(
        backend=backend,
        auth=Authenticator(
            enabled=enabled, secret=secret, keys=keys, default_tenant=default_tenant
        ),
        limiter=RateLimiter(
            opts.rate_limits or server.rate_limits,
            redis_url=_limits_redis_url(backend, opts.limits_storage),
            key_prefix=settings.redis.key_prefix,
        ),
        metrics=metrics,
        logs=logs,
        push=push_limits or _push_limits(server),
        tail=tail_limits or _tail_limits(server),
        default_tenant=default_tenant,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        metrics.follow_backend(backend)  # summaries the TUI or CLI make count too
        ctx.ready = True
        try:
            yield
        finally:
            ctx.ready = False
            ctx.stopping.set()
            await metrics.close()
            await ctx.limiter.close()
            if own_keys:
                await keys.close()
            if logs is not None:
                await asyncio.to_thread(logs.close)

    app = FastAPI(
        title="agentlog",
        version=__version__,
        summary="The agentlog HTTP port: the JSON API, Prometheus metrics, OTLP and a "
        "Loki-compatible push and query API over the backend.",
        lifespan=lifespan,
        docs_url=None,  # the pages load scripts from a CDN; the port serves data only
        redoc_url=None,
    )
    app.state.agentlog = ctx
    install(
        app,
        metrics=metrics,
        logs=logs,
        cors_origins=server.cors_origins if opts.cors_origins is None else opts.cors_origins,
        body_limit=server.body_limit if opts.body_limit is None else opts.body_limit,
        push_limit=ctx.push.max_body_bytes,
    )
    app.include_router(api.public)
    app.include_router(api.router)
    app.include_router(otlp.router)
    app.include_router(
        loki_api.router, dependencies=[Depends(loki_guard)], responses=LOKI_RESPONSES
    )
    for router in routers:
        app.include_router(router)
    return app
