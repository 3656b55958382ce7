"""The HTTP port's protection limits come from the config (`server.*` in YAML, env or CLI):
rate limits, the JSON API and push body limits, and the live-tail limits, over real loopback
HTTP. Explicit `create_app` arguments still win over the settings."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import orjson
import pytest
import websockets
from http_server import RunningServer, run_server
from test_http_api import SECRET, bearer, push_body, token

from backend.config import load_config
from backend.facade import Backend
from backend.http.app import AppContext, HttpOptions, TailLimits, create_app
from backend.http.limits import RateLimits
from backend.http.push_decode import PushLimits
from backend.http.security import DEFAULT_BODY_LIMIT


@asynccontextmanager
async def configured(
    tmp_path: Path,
    server_yaml: str = "",
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> AsyncIterator[Backend]:
    """A Backend loaded the way `agentlog serve` loads one: from a YAML file (with `server_yaml`
    under `server:`), then `env`, then `overrides`."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"server:\n  jwt_secret: {SECRET}\n" + textwrap.indent(server_yaml, "  "),
        encoding="utf-8",
    )
    loaded = load_config(path, env={"HOME": str(tmp_path), **(env or {})}, overrides=overrides)
    backend = await Backend.open(loaded.settings)
    try:
        yield backend
    finally:
        await backend.close()


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[RunningServer, httpx.AsyncClient]]:
    async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url, timeout=20) as c:
        yield srv, c


def context(app: Any) -> AppContext:
    ctx = app.state.agentlog
    assert isinstance(ctx, AppContext)
    return ctx


def tail_url(srv: RunningServer) -> str:
    return srv.ws_url + "/api/logs/tail?" + urlencode({"query": '{agent="x"}', "limit": "0"})


# ---------------------------------------------------------------- defaults and precedence


async def test_settings_defaults_are_the_ports_defaults(tmp_path: Path) -> None:
    async with configured(tmp_path) as be:
        server = be.settings.server
        assert server.body_limit == DEFAULT_BODY_LIMIT
        app = create_app(be)
        async with serving(app):
            ctx = context(app)
            assert ctx.limiter.limits == RateLimits()
            assert ctx.push == PushLimits()
            assert ctx.tail == TailLimits()


async def test_settings_reach_the_app_and_explicit_arguments_win(tmp_path: Path) -> None:
    yaml_text = (
        "push_body_limit: 2MiB\n"
        "push_decoded_limit: 3MiB\n"
        "max_tails_per_tenant: 4\n"
        "tail_max_duration: 90s\n"
        "rate_limits:\n"
        "  read: 2/minute\n"
        "  push: 10/second;100/minute\n"
    )
    async with configured(tmp_path, yaml_text) as be:
        app = create_app(be)
        async with serving(app):
            ctx = context(app)
            assert ctx.limiter.limits == RateLimits(read="2/minute", push="10/second;100/minute")
            assert [str(i) for i in ctx.limiter.items["push"]] == [
                "10 per 1 second",
                "100 per 1 minute",
            ]
            assert ctx.push == PushLimits(max_body_bytes=2 * 1024**2, max_decoded_bytes=3 * 1024**2)
            assert ctx.tail == TailLimits(max_duration_s=90, max_per_tenant=4)

        explicit = create_app(
            be,
            push_limits=PushLimits(max_body_bytes=5000),
            tail_limits=TailLimits(max_per_tenant=7),
            options=HttpOptions(rate_limits=RateLimits(enabled=False), body_limit=123),
        )
        async with serving(explicit) as (_, c):
            ctx = context(explicit)
            assert ctx.limiter.limits == RateLimits(enabled=False)
            assert ctx.push == PushLimits(max_body_bytes=5000)
            assert ctx.tail == TailLimits(max_per_tenant=7)
            h = {**bearer(token("admin")), "Content-Type": "application/json"}
            r = await c.post(
                "/api/logs/search", content=orjson.dumps({"text": "x" * 200}), headers=h
            )
            assert r.status_code == 413 and "at most 123 bytes" in r.json()["detail"]


# ---------------------------------------------------------------- rate limits


async def test_read_rate_limit_from_the_config_file(tmp_path: Path) -> None:
    async with (
        configured(tmp_path, "rate_limits:\n  read: 2/minute\n") as be,
        serving(create_app(be)) as (_, c),
    ):
        h = bearer(token(sub="alice"))
        codes = [(await c.get("/api/tasks", headers=h)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await c.get("/api/tasks", headers=h)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert "rate limit" in r.json()["detail"]
        # per identity: another caller still has its own budget
        assert (await c.get("/api/tasks", headers=bearer(token(sub="bob")))).status_code == 200


async def test_rate_limits_disabled_from_the_environment(tmp_path: Path) -> None:
    env = {"AGENTLOG_SERVER__RATE_LIMITS__ENABLED": "false"}
    async with (
        configured(tmp_path, "rate_limits:\n  read: 1/minute\n", env=env) as be,
        serving(create_app(be)) as (_, c),
    ):
        h = bearer(token())
        codes = [(await c.get("/api/tasks", headers=h)).status_code for _ in range(4)]
        assert codes == [200] * 4


# ---------------------------------------------------------------- body limits


async def test_body_limit_from_the_config_file(tmp_path: Path) -> None:
    async with (
        configured(tmp_path, "body_limit: 1KB\n") as be,
        serving(create_app(be)) as (_, c),
    ):
        h = {**bearer(token("admin")), "Content-Type": "application/json"}
        small = orjson.dumps({"text": "x" * 900})
        assert len(small) < 1000
        r = await c.post("/api/logs/search", content=small, headers=h)
        assert r.status_code == 200, r.text
        big = orjson.dumps({"text": "x" * 1100})
        r = await c.post("/api/logs/search", content=big, headers=h)
        assert r.status_code == 413 and "at most 1000 bytes" in r.json()["detail"]
        # push routes keep their own (default) limit
        t0 = time.time_ns()
        body = push_body([(t0 + i, {"agent": "a"}, "y" * 100) for i in range(20)])
        assert len(orjson.dumps(body)) > 1000
        r = await c.post("/loki/api/v1/push", json=body, headers=bearer(token("operator")))
        assert r.status_code == 204, r.text


async def test_push_body_limit_from_the_environment(tmp_path: Path) -> None:
    env = {"AGENTLOG_SERVER__PUSH_BODY_LIMIT": "4KiB"}
    async with configured(tmp_path, env=env) as be:
        assert be.settings.server.push_body_limit == 4096
        async with serving(create_app(be)) as (_, c):
            h = bearer(token("operator"))
            t0 = time.time_ns()
            fits = push_body([(t0 + i, {"agent": "a"}, "y" * 100) for i in range(10)])
            assert len(orjson.dumps(fits)) < 4096
            assert (await c.post("/loki/api/v1/push", json=fits, headers=h)).status_code == 204
            over = push_body([(t0 + i, {"agent": "a"}, "y" * 100) for i in range(100)])
            assert len(orjson.dumps(over)) > 4096
            r = await c.post("/loki/api/v1/push", json=over, headers=h)
            assert r.status_code == 413 and "at most 4096 bytes" in r.text


# ---------------------------------------------------------------- live tails


async def test_max_tails_per_tenant_from_the_command_line(tmp_path: Path) -> None:
    async with (
        configured(tmp_path, overrides={"server.max_tails_per_tenant": 1}) as be,
        serving(create_app(be)) as (srv, _),
    ):
        acme = bearer(token())
        async with websockets.connect(tail_url(srv), additional_headers=acme) as first:
            start = orjson.loads(await asyncio.wait_for(first.recv(), 5))
            assert start["type"] == "start"  # admitted: it holds acme's one slot
            async with websockets.connect(tail_url(srv), additional_headers=acme) as second:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await asyncio.wait_for(second.recv(), 5)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1013
                assert "limit 1" in info.value.rcvd.reason
            # the limit is per tenant
            globex = bearer(token(tenant="globex"))
            async with websockets.connect(tail_url(srv), additional_headers=globex) as other:
                frame = orjson.loads(await asyncio.wait_for(other.recv(), 5))
                assert frame["type"] == "start"


async def test_tail_max_duration_from_the_config_file(tmp_path: Path) -> None:
    async with (
        configured(tmp_path, "tail_max_duration: 500ms\n") as be,
        serving(create_app(be)) as (srv, _),
        websockets.connect(tail_url(srv), additional_headers=bearer(token())) as ws,
    ):
        t0 = time.monotonic()
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "start"
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
        assert "maximum duration" in info.value.rcvd.reason
        assert 0.4 <= time.monotonic() - t0 < 8
