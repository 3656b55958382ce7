"""Security of the HTTP port over real loopback HTTP: headers, CORS, body limits and the
decompression-bomb guard, gzip responses, request ids, the access and error logs, rate limits
(per identity and route, shared by two instances on one Redis), failed-login throttling, API keys
with a real Loki client (python-logging-loki), and tails closed with 1001 on shutdown."""

from __future__ import annotations

import asyncio
import gzip
import logging
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import orjson
import pytest
import websockets
from http_server import RunningServer, backend_at, run_server
from test_http_api import SECRET, bearer, push_body, seed, token

from backend.facade import Backend
from backend.http.app import HttpOptions, create_app
from backend.http.limits import RateLimits

NS = 1_000_000_000


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    be = await backend_at(tmp_path, {"server.jwt_secret": SECRET})
    yield be
    await be.close()


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[RunningServer]:
    async with run_server(create_app(backend)) as srv:
        yield srv


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as c:
        yield c


# ---------------------------------------------------------------- headers, CORS, gzip, ids


async def test_security_headers_everywhere(client: httpx.AsyncClient) -> None:
    for path, headers in [
        ("/health", {}),
        ("/api/tasks", bearer(token())),
        ("/api/tasks", {}),  # a 401
        ("/no/such/route", {}),  # a 404
    ]:
        r = await client.get(path, headers=headers)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert "server" not in r.headers
    assert (await client.get("/docs")).status_code == 404  # no pages with CDN scripts
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "agentlog"


async def test_cors_is_off_unless_configured(client: httpx.AsyncClient, backend: Backend) -> None:
    origin = {"Origin": "https://dash.example"}
    r = await client.get("/api/tasks", headers={**origin, **bearer(token())})
    assert "access-control-allow-origin" not in r.headers
    pre = {**origin, "Access-Control-Request-Method": "GET"}
    r = await client.options("/api/tasks", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    app = create_app(backend, options=HttpOptions(cors_origins=["https://dash.example"]))
    async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        r = await c.options(
            "/api/tasks", headers={**pre, "Access-Control-Request-Headers": "authorization"}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://dash.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in r.headers
        r = await c.get("/api/tasks", headers={**origin, **bearer(token())})
        assert r.headers["access-control-allow-origin"] == "https://dash.example"
        r = await c.get("/api/tasks", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_gzip_responses_and_request_ids(client: httpx.AsyncClient) -> None:
    await seed(client, "acme", [(f"r{i}", "coder", i % 2 == 0) for i in range(6)])
    r = await client.get("/api/tasks", headers={**bearer(token()), "Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and len(r.json()["tasks"]) == 6
    r = await client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = await client.get("/health", headers={"X-Request-ID": "bad id!" * 20})
    assert len(r.headers["x-request-id"]) == 32  # replaced by a fresh one


# ---------------------------------------------------------------- body limits, bombs


async def test_body_limits_413(client: httpx.AsyncClient) -> None:
    h = bearer(token("admin"))
    big = b'{"text": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = await client.post(
        "/api/logs/search", content=big, headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"text": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    r = await client.post(
        "/api/logs/search", content=chunks(), headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    # push routes take Loki's 100 MiB: a 2 MiB push is fine
    t0 = time.time_ns()
    body = push_body([(t0 + i, {"agent": "big"}, "y" * 1000) for i in range(2000)])
    r = await client.post("/loki/api/v1/push", json=body, headers=h)
    assert r.status_code == 204


async def test_decompression_bomb_refused(client: httpx.AsyncClient, backend: Backend) -> None:
    from backend.http.push_decode import PushLimits

    h = bearer(token("operator"))
    limits = PushLimits(max_decoded_bytes=1024 * 1024)
    app = create_app(backend, push_limits=limits)
    bomb = gzip.compress(b"{" + b" " * 20_000_000 + b"}")  # 20 KB on the wire, 20 MB inflated
    async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        for path, ctype in [
            ("/v1/logs", "application/json"),
            ("/v1/logs", "application/x-protobuf"),
            ("/loki/api/v1/push", "application/json"),
        ]:
            r = await c.post(
                path,
                content=bomb,
                headers={**h, "Content-Type": ctype, "Content-Encoding": "gzip"},
            )
            assert r.status_code == 413, (path, ctype, r.status_code)
    assert await backend.series([], 0, time.time_ns() + NS, "acme") == []


# ---------------------------------------------------------------- logs


async def test_access_and_error_logs(backend: Backend, tmp_path: Path) -> None:
    app = create_app(backend)
    ctx = app.state.agentlog
    tok = token("admin", sub="carol")
    key = await ctx.auth.keys.create("acme", "operator", name="pusher")

    async def broken() -> Any:
        raise RuntimeError("disk on fire")

    async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        q = '{agent="secret-query-text"}'
        r = await c.get("/api/logs/query_range", params={"query": q}, headers=bearer(tok))
        assert r.status_code == 200
        await c.post("/api/logs/search", json={"text": "body-secret"}, headers=bearer(tok))
        await c.get("/api/whoami", headers=bearer(key.secret))
        await c.get("/api/tasks", headers=bearer("wrong-token"))
        backend.cache_stats = broken  # type: ignore[method-assign]
        r = await c.get(
            "/api/analytics/cache-stats", headers={**bearer(tok), "X-Request-ID": "boom1"}
        )
        assert r.status_code == 500 and r.json() == {"detail": "internal error (request id boom1)"}
        assert "disk on fire" not in r.text
        ctx.logs.flush()
        logs = tmp_path / "logs"
        access = next(logs.glob("access-*.log")).read_text()
        errors = next(logs.glob("error-*.log")).read_text()
    records = [orjson.loads(ln) for ln in access.splitlines()]
    by_route = {r["route"]: r for r in records}
    qr = by_route["/api/logs/query_range"]
    assert qr["who"] == "jwt:carol" and qr["tenant"] == "acme" and qr["status"] == 200
    assert qr["duration_ms"] > 0 and len(qr["request_id"]) == 32 and qr["method"] == "GET"
    assert by_route["/api/whoami"]["who"] == f"apikey:{key.key.key_id}"
    assert any(r["status"] == 401 and r["who"] == "-" for r in records)
    for secret in (tok, key.secret, "secret-query-text", "body-secret", "wrong-token"):
        assert secret not in access and secret not in errors
    err = [orjson.loads(ln) for ln in errors.splitlines()]
    assert err[-1]["request_id"] == "boom1" and "disk on fire" in err[-1]["error"]
    assert "Traceback" in err[-1]["traceback"]
    assert next(logs.glob("access-*.log")).stat().st_mode & 0o777 == 0o600


# ---------------------------------------------------------------- rate limits


async def test_rate_limits_per_identity_and_route(backend: Backend) -> None:
    app = create_app(
        backend,
        options=HttpOptions(rate_limits=RateLimits(read="3/minute", auth_failures="4/minute")),
    )
    async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        alice, bob = bearer(token(sub="alice")), bearer(token(sub="bob"))
        codes = [(await c.get("/api/tasks", headers=alice)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await c.get("/api/tasks", headers=alice)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert "rate limit" in r.json()["detail"]
        assert (await c.get("/api/whoami", headers=alice)).status_code == 200  # other route
        assert (await c.get("/api/tasks", headers=bob)).status_code == 200  # other identity
        # failed logins from one address are throttled, even with a good token afterwards
        bad = [(await c.get("/api/whoami", headers=bearer("nope"))).status_code for _ in range(5)]
        assert bad == [401, 401, 401, 401, 429]
        r = await c.get("/api/whoami", headers=bearer(token(sub="dave")))
        assert r.status_code == 429 and "retry-after" in r.headers


@pytest.mark.redis
async def test_rate_limits_shared_by_two_instances_on_one_redis(
    tmp_path: Path, redis_url: str
) -> None:
    prefix = f"agentlog-test-{uuid.uuid4().hex[:8]}:"
    over = {"server.jwt_secret": SECRET, "redis.key_prefix": prefix}
    a = await backend_at(tmp_path / "a", over)
    b = await backend_at(tmp_path / "b", over)
    opts = HttpOptions(rate_limits=RateLimits(read="4/minute"), limits_storage=redis_url)
    try:
        async with (
            run_server(create_app(a, options=opts)) as sa,
            run_server(create_app(b, options=opts)) as sb,
            httpx.AsyncClient() as c,
        ):
            h = bearer(token(sub="shared"))
            codes = []
            for srv in (sa, sb, sa, sb, sa, sb):
                codes.append((await c.get(srv.url + "/api/tasks", headers=h)).status_code)
            assert codes == [200, 200, 200, 200, 429, 429]
            # memory storage would not share: each instance counts alone
            solo = HttpOptions(rate_limits=RateLimits(read="4/minute"), limits_storage="memory")
            async with (
                run_server(create_app(a, options=solo)) as ma,
                run_server(create_app(b, options=solo)) as mb,
            ):
                codes = [
                    (await c.get(s.url + "/api/tasks", headers=h)).status_code
                    for s in (ma, mb, ma, mb, ma, mb)
                ]
                assert codes == [200] * 6
    finally:
        await a.close()
        await b.close()


async def test_rate_limit_storage_down_lets_requests_through(backend: Backend) -> None:
    opts = HttpOptions(
        rate_limits=RateLimits(read="1/minute"), limits_storage="redis://127.0.0.1:1/0"
    )
    app = create_app(backend, options=opts)
    async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        codes = [(await c.get("/api/tasks", headers=bearer(token()))).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        assert app.state.agentlog.limiter.errors >= 3


# ---------------------------------------------------------------- API keys, real Loki client


async def test_python_logging_loki_pushes_with_an_api_key(
    server: RunningServer, client: httpx.AsyncClient, backend: Backend
) -> None:
    import logging_loki  # type: ignore[import-untyped, unused-ignore]

    keys = backend_keys(server)
    pusher = await keys.create("acme", "operator", name="fleet")
    reader = await keys.create("acme", "viewer", name="grafana")

    def make(secret: str, app: str) -> tuple[Any, list[BaseException | None]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            handler = logging_loki.LokiHandler(
                url=server.url + "/loki/api/v1/push",
                tags={"application": app},
                auth=("any-user", secret),
                version="1",
            )
        failures: list[BaseException | None] = []
        handler.handleError = lambda record: failures.append(sys.exc_info()[1])
        return handler, failures

    handler, failures = make(pusher.secret, "keyed")
    logger = logging.getLogger(f"pll-key-{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    for i in range(3):
        await asyncio.to_thread(logger.info, f"hello {i}")
    handler.emitter.close()
    assert failures == []
    # the lines are the key's tenant's
    r = await client.get(
        "/api/logs/query_range",
        params={"query": '{application="keyed"}', "direction": "forward"},
        headers=bearer(token("viewer", "acme")),
    )
    assert [e["line"] for s in r.json()["streams"] for e in s["entries"]] == [
        "hello 0",
        "hello 1",
        "hello 2",
    ]
    other = await client.get(
        "/api/logs/query_range",
        params={"query": '{application="keyed"}'},
        headers=bearer(token("viewer", "fake")),
    )
    assert other.json()["streams"] == []
    # a viewer key cannot push; a bearer key can; a revoked key cannot
    handler, failures = make(reader.secret, "viewer-push")
    logger.removeHandler(logger.handlers[0])
    logger.addHandler(handler)
    await asyncio.to_thread(logger.info, "refused")
    handler.emitter.close()
    assert failures and "403" in str(failures[0])
    body = push_body([(time.time_ns(), {"application": "bearer"}, "via bearer")])
    r = await client.post("/loki/api/v1/push", json=body, headers=bearer(pusher.secret))
    assert r.status_code == 204
    await keys.revoke(pusher.key.key_id)
    r = await client.post("/loki/api/v1/push", json=body, headers=bearer(pusher.secret))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    forged = pusher.secret[:-4] + "AAAA"
    r = await client.post("/loki/api/v1/push", json=body, headers=bearer(forged))
    assert r.status_code == 401


def backend_keys(server: RunningServer) -> Any:
    return server.server.config.app.state.agentlog.auth.keys


async def test_admin_manages_keys_of_its_tenant_only(client: httpx.AsyncClient) -> None:
    acme, globex = bearer(token("admin", "acme")), bearer(token("admin", "globex"))
    r = await client.post("/api/admin/apikeys", json={"role": "viewer", "name": "x"}, headers=acme)
    assert r.status_code == 201
    new = r.json()
    assert new["secret"].startswith("alk_") and new["key"]["tenant"] == "acme"
    assert [k["key_id"] for k in (await client.get("/api/admin/apikeys", headers=acme)).json()] == [
        new["key"]["key_id"]
    ]
    assert (await client.get("/api/admin/apikeys", headers=globex)).json() == []
    kid = new["key"]["key_id"]
    assert (await client.delete(f"/api/admin/apikeys/{kid}", headers=globex)).status_code == 404
    r = await client.delete(f"/api/admin/apikeys/{kid}", headers=acme)
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert (await client.get("/api/whoami", headers=bearer(new["secret"]))).status_code == 401


# ---------------------------------------------------------------- shutdown


async def test_tails_close_with_1001_when_the_server_stops(backend: Backend) -> None:
    app = create_app(backend)
    h = bearer(token())
    q = urlencode({"query": '{agent="x"}'})
    async with (
        run_server(app) as srv,
        websockets.connect(f"{srv.ws_url}/api/logs/tail?{q}", additional_headers=h) as api_ws,
        websockets.connect(f"{srv.ws_url}/loki/api/v1/tail?{q}", additional_headers=h) as loki_ws,
    ):
        assert orjson.loads(await api_ws.recv())["type"] == "start"
        app.state.agentlog.stopping.set()  # what serve's SIGTERM handler does first
        for ws in (api_ws, loki_ws):
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
