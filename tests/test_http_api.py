"""The JSON API of the HTTP port over real loopback HTTP (uvicorn in the test's loop; httpx2 and
websockets as clients): every endpoint with each role, and with tokens that are missing, expired,
badly signed or of another tenant. Nothing crosses tenants."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import jwt
import orjson
import pytest
import websockets
from http_server import RunningServer, backend_at, run_server

from backend.cli import admin
from backend.config import load_config
from backend.errors import UsageError
from backend.facade import Backend
from backend.http.api import TASKS_TTL_S, SearchIn, build_search_logql, re2_escape
from backend.http.app import create_app
from backend.http.auth import mint_token
from backend.http.serve import check_bind
from backend.models import TriageState

NS = 1_000_000_000
SECRET = "test-secret-0123456789-abcdefghijklmnop"
ROOT = Path(__file__).resolve().parent.parent


def token(role: str = "viewer", tenant: str = "acme", sub: str = "alice", ttl: float = 3600) -> str:
    return mint_token(SECRET, subject=sub, role=role, tenant=tenant, ttl_s=ttl)


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def line(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def run_lines(
    run_id: str, agent: str, t0: int, *, fail: bool
) -> list[tuple[int, dict[str, str], str]]:
    out = [
        (t0, {"level": "info"}, line(event="run.start", run_id=run_id, task="fix-tests")),
        (
            t0 + NS,
            {"level": "info"},
            line(event="llm.call", run_id=run_id, model="m-1", input_tokens=100, output_tokens=10),
        ),
    ]
    if fail:
        out.append(
            (
                t0 + 2 * NS,
                {"level": "error"},
                line(
                    event="error",
                    run_id=run_id,
                    **{
                        "error.type": "ToolTimeout",
                        "error.message": f"tool timed out after {run_id[-1]}s",
                    },
                ),
            )
        )
    out.append(
        (
            t0 + 3 * NS,
            {"level": "info"},
            line(event="run.end", run_id=run_id, status="failed" if fail else "succeeded"),
        )
    )
    return [(ts, {"agent": agent, **lab}, ln) for ts, lab, ln in out]


def push_body(entries: list[tuple[int, dict[str, str], str]]) -> dict[str, Any]:
    streams: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
    for ts, labels, ln in entries:
        streams.setdefault(tuple(sorted(labels.items())), []).append([str(ts), ln])
    return {"streams": [{"stream": dict(k), "values": v} for k, v in streams.items()]}


async def seed(client: httpx.AsyncClient, tenant: str, runs: list[tuple[str, str, bool]]) -> None:
    t0 = (time.time_ns() // NS - 300) * NS
    entries = []
    for i, (run_id, agent, fail) in enumerate(runs):
        entries += run_lines(run_id, agent, t0 + i * 10 * NS, fail=fail)
    r = await client.post(
        "/loki/api/v1/push", json=push_body(entries), headers=bearer(token("operator", tenant))
    )
    assert r.status_code == 204, r.text


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
        await seed(
            c,
            "acme",
            [("acme-r1", "coder", True), ("acme-r2", "coder", False), ("acme-r3", "planner", True)],
        )
        await seed(c, "globex", [("globex-r1", "coder", True)])
        yield c


# ---------------------------------------------------------------- every endpoint, each role

READS = [
    "/api/whoami",
    "/api/tasks",
    "/api/tasks/acme-r1",
    "/api/tasks/acme-r1/summary",
    '/api/logs/query_range?query={agent="coder"}',
    "/api/analytics/overview",
    "/api/analytics/failures",
    "/api/analytics/performance",
    "/api/analytics/cache-stats",
    "/health/detailed",
    "/metrics",
    "/metrics/json",
    '/loki/api/v1/query_range?query={agent="coder"}',
    "/loki/api/v1/labels",
]


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
async def test_every_read_endpoint_answers_each_role(client: httpx.AsyncClient, role: str) -> None:
    h = bearer(token(role))
    for path in READS:
        r = await client.get(path, headers=h)
        assert r.status_code == 200, (path, r.status_code, r.text)
    r = await client.post("/api/logs/search", json={"text": "timed out"}, headers=h)
    assert r.status_code == 200
    assert (await client.get("/health")).status_code == 200  # no auth at all


@pytest.mark.parametrize(
    ("role", "status_code", "push", "admin_code"),
    [("viewer", 403, 403, 403), ("operator", 200, 204, 403), ("admin", 200, 204, 201)],
)
async def test_writes_need_their_role(
    client: httpx.AsyncClient, role: str, status_code: int, push: int, admin_code: int
) -> None:
    h = bearer(token(role))
    r = await client.put("/api/tasks/acme-r1/status", json={"triage": "acked"}, headers=h)
    assert r.status_code == status_code, r.text
    body = push_body([(time.time_ns(), {"agent": "x"}, "hello")])
    r = await client.post("/loki/api/v1/push", json=body, headers=h)
    assert r.status_code == push
    r = await client.post("/api/admin/apikeys", json={"role": "operator"}, headers=h)
    assert r.status_code == admin_code
    r = await client.get("/api/tasks/acme-r1/summary?refresh=true", headers=h)
    assert r.status_code == (403 if role == "viewer" else 200)
    if role == "viewer":
        assert "operator" in r.json()["detail"]


async def test_missing_expired_badly_signed_and_forged_tokens(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/tasks")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert "authentication required" in r.json()["detail"]
    expired = mint_token(SECRET, subject="a", role="admin", tenant="acme", ttl_s=1, now_s=1e9)
    r = await client.get("/api/tasks", headers=bearer(expired))
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    other = mint_token(
        "another-secret-0123456789-abcdefghijk", subject="a", role="admin", tenant="acme", ttl_s=60
    )
    r = await client.get("/api/tasks", headers=bearer(other))
    assert r.status_code == 401 and "signature" in r.json()["detail"]
    claims = {"sub": "a", "role": "admin", "tenant": "acme", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, key="", algorithm="none")
    assert (await client.get("/api/tasks", headers=bearer(unsigned))).status_code == 401
    bad_role = jwt.encode({**claims, "role": "root"}, SECRET, algorithm="HS256")
    assert (await client.get("/api/tasks", headers=bearer(bad_role))).status_code == 401
    no_exp = jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET, "HS256")
    r = await client.get("/api/tasks", headers=bearer(no_exp))
    assert r.status_code == 401 and "exp" in r.json()["detail"]
    assert (await client.get("/api/tasks", headers=bearer("garbage"))).status_code == 401
    r = await client.get("/api/tasks", headers={"Authorization": "Digest abc"})
    assert r.status_code == 401
    # every route in READS refuses without a token; the WebSocket too
    for path in READS:
        assert (await client.get(path)).status_code == 401, path


async def test_nothing_crosses_tenants(client: httpx.AsyncClient) -> None:
    acme, globex = bearer(token("admin", "acme")), bearer(token("admin", "globex"))
    ids = {t["run_id"] for t in (await client.get("/api/tasks", headers=acme)).json()["tasks"]}
    assert ids == {"acme-r1", "acme-r2", "acme-r3"}
    ids = {t["run_id"] for t in (await client.get("/api/tasks", headers=globex)).json()["tasks"]}
    assert ids == {"globex-r1"}
    assert (await client.get("/api/tasks/acme-r1", headers=globex)).status_code == 404
    assert (await client.get("/api/tasks/acme-r1/summary", headers=globex)).status_code == 404
    r = await client.put("/api/tasks/acme-r1/status", json={"triage": "acked"}, headers=globex)
    assert r.status_code == 404
    r = await client.get("/api/logs/query_range", params={"query": '{agent=~".+"}'}, headers=globex)
    lines = [e["line"] for s in r.json()["streams"] for e in s["entries"]]
    assert lines and all("globex" in ln for ln in lines)
    r = await client.post("/api/logs/search", json={"run_id": "acme-r1"}, headers=globex)
    assert r.json()["entries"] == []
    r = await client.get(
        "/loki/api/v1/query_range", params={"query": '{agent=~".+"}'}, headers=globex
    )
    assert "acme" not in r.text
    # The tenant is the token's: a header naming another one is refused, not obeyed.
    r = await client.get("/api/tasks", headers={**globex, "X-Scope-OrgID": "acme"})
    assert r.status_code == 403 and "tenant" in r.json()["detail"]
    r = await client.get("/api/tasks", headers={**globex, "X-Scope-OrgID": "globex"})
    assert r.status_code == 200
    ov = (await client.get("/api/analytics/overview", headers=globex)).json()
    assert ov["current"]["runs"] == 1
    fails = (await client.get("/api/analytics/failures", headers=globex)).json()
    assert all(set(p["run_ids"]) <= {"globex-r1"} for p in fails["patterns"])
    # a viewer's /metrics shows its own tenant only
    text = (await client.get("/metrics", headers=bearer(token("viewer", "globex")))).text
    assert 'tenant="globex"' in text and 'tenant="acme"' not in text


# ---------------------------------------------------------------- logs


async def test_query_range_is_cached_and_validated(client: httpx.AsyncClient) -> None:
    h = bearer(token())
    q = '/api/logs/query_range?query={agent="coder"}&since=1h&limit=3'
    first = await client.get(q, headers=h)
    second = await client.get(q, headers=h)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit" and second.json() == first.json()
    body = first.json()
    assert body["result_type"] == "streams"
    entries = [e for s in body["streams"] for e in s["entries"]]
    assert len(entries) == 3 and all(isinstance(e["ts"], str) for e in entries)
    # metric query
    r = await client.get(
        "/api/logs/query_range",
        params={"query": 'sum(count_over_time({agent=~".+"}[1m]))', "since": "10m"},
        headers=h,
    )
    assert r.status_code == 200 and r.json()["result_type"] == "matrix" and r.json()["series"]
    # field-level 422s
    cases = {
        "/api/logs/query_range?query={agent=": ["query", "query"],
        '/api/logs/query_range?query={a="b"}&since=forever': ["query", "since"],
        '/api/logs/query_range?query={a="b"}&start=yesterday': ["query", "start"],
        '/api/logs/query_range?query={a="b"}&limit=0': ["query", "limit"],
        '/api/logs/query_range?query={a="b"}&direction=sideways': ["query", "direction"],
        '/api/logs/query_range?query={a="b"}&step=-1': ["query", "step"],
        "/api/logs/query_range": ["query", "query"],
    }
    for path, loc in cases.items():
        r = await client.get(path, headers=h)
        assert r.status_code == 422, path
        assert r.json()["detail"][0]["loc"] == loc, (path, r.json())


async def test_search_builds_logql_and_returns_it(client: httpx.AsyncClient) -> None:
    h = bearer(token())
    r = await client.post(
        "/api/logs/search",
        json={"text": "TIMED OUT", "levels": ["ERROR"], "agents": ["coder"], "since": "1h"},
        headers=h,
    )
    body = r.json()
    assert r.status_code == 200
    assert body["logql"] == '{agent="coder", level=~"(?i)(error)"} |~ "(?i)TIMED OUT"'
    assert [orjson.loads(e["line"])["run_id"] for e in body["entries"]] == ["acme-r1"]
    r = await client.post("/api/logs/search", json={"run_id": "acme-r3"}, headers=h)
    lines = [orjson.loads(e["line"]) for e in r.json()["entries"]]
    assert len(lines) == 4 and {ln["run_id"] for ln in lines} == {"acme-r3"}
    assert "| json run_id=" in r.json()["logql"]
    r = await client.post(
        "/api/logs/search",
        json={"regex": "llm\\.call", "agents": ["coder", "planner"], "direction": "forward"},
        headers=h,
    )
    got = r.json()
    assert got["logql"].startswith('{agent=~"coder|planner"} |~ "llm\\\\.call"')
    ts = [int(e["ts"]) for e in got["entries"]]
    assert len(ts) == 3 and ts == sorted(ts)
    # validation, field by field
    for body_in, loc in [
        ({"regex": "("}, ["body", "regex"]),
        ({"levels": ["err or"]}, ["body", "levels"]),
        ({"limit": 0}, ["body", "limit"]),
        ({"nope": 1}, ["body", "nope"]),
        ({"since": "soon"}, ["body", "since"]),
    ]:
        r = await client.post("/api/logs/search", json=body_in, headers=h)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, (body_in, r.text)


def test_search_logql_quotes_user_values() -> None:
    s = SearchIn(text='say "hi"\n', agents=['we"ird'], run_id='r"1', case_sensitive=True)
    q = build_search_logql(s, agent_label="agent", level_label="level", run_id="run_id")
    assert q == (
        '{agent="we\\"ird"} |= "say \\"hi\\"\\n" | json run_id="run_id" | run_id="r\\"1" '
        "| drop __error__, __error_details__"
    )
    assert re2_escape("a.b*c(d)") == "a\\.b\\*c\\(d\\)"


# ---------------------------------------------------------------- tasks


async def test_tasks_filters_sort_and_keyset_pages(client: httpx.AsyncClient) -> None:
    h = bearer(token())
    r = await client.get("/api/tasks?status=failed&sort=newest", headers=h)
    assert [t["run_id"] for t in r.json()["tasks"]] == ["acme-r3", "acme-r1"]
    r = await client.get("/api/tasks?agent=planner", headers=h)
    assert [t["run_id"] for t in r.json()["tasks"]] == ["acme-r3"]
    r = await client.get("/api/tasks?q=r2", headers=h)
    assert [t["run_id"] for t in r.json()["tasks"]] == ["acme-r2"]
    r = await client.get("/api/tasks?since=1h&status=succeeded&status=failed", headers=h)
    assert len(r.json()["tasks"]) == 3
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        url = "/api/tasks?sort=oldest&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url, headers=h)).json()
        seen += [t["run_id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["acme-r1", "acme-r2", "acme-r3"]
    r = await client.get("/api/tasks?cursor=bogus", headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    r = await client.get("/api/tasks?status=exploded", headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["query", "status"]
    t = (await client.get("/api/tasks/acme-r1", headers=h)).json()
    assert t["status"] == "failed" and t["error_count"] == 1 and t["model"] == "m-1"
    assert t["input_tokens"] == 100 and t["duration_ns"] == 3 * NS
    assert (await client.get("/api/tasks/nope", headers=h)).status_code == 404


async def test_task_lists_are_cached_for_a_second_and_a_triage_shows_at_once(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    h, op = bearer(token()), bearer(token("operator", sub="bob"))
    url = "/api/tasks?status=failed&sort=newest&since=1h"
    first = await client.get(url, headers=h)
    second = await client.get(url, headers=h)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json() == first.json()
    assert [t["triage"] for t in first.json()["tasks"]] == ["new", "new"]
    # another tenant asking the same URL gets its own runs, not acme's page
    other = await client.get(url, headers=bearer(token(tenant="globex")))
    assert [t["run_id"] for t in other.json()["tasks"]] == ["globex-r1"]
    r = await client.put("/api/tasks/acme-r1/status", json={"triage": "acked"}, headers=op)
    assert r.status_code == 200
    after = await client.get(url, headers=h)
    assert after.headers["x-cache"] == "miss"
    assert {t["run_id"]: t["triage"] for t in after.json()["tasks"]} == {
        "acme-r3": "new",
        "acme-r1": "acked",
    }
    # 20 dashboards asking at once for a page not in the cache: one read of the task table
    calls = 0
    real_list = backend.list_tasks

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await real_list(*args, **kwargs)

    backend.list_tasks = counting  # type: ignore[method-assign]
    try:
        many = await asyncio.gather(
            *(client.get("/api/tasks?sort=oldest", headers=h) for _ in range(20))
        )
    finally:
        backend.list_tasks = real_list  # type: ignore[method-assign]
    assert calls == 1 and len({r.content for r in many}) == 1
    assert sorted(r.headers["x-cache"] for r in many) == ["hit"] * 19 + ["miss"]
    # a run changed behind the port's back (here: the facade) shows once the second is over
    await backend.set_triage("acme-r3", TriageState.ACKED, by="carol", tenant="acme")
    await asyncio.sleep(TASKS_TTL_S + 0.1)
    later = await client.get(url, headers=h)
    assert {t["triage"] for t in later.json()["tasks"]} == {"acked"}


async def test_status_and_triage_transitions(client: httpx.AsyncClient, backend: Backend) -> None:
    op = bearer(token("operator", sub="bob"))
    r = await client.put(
        "/api/tasks/acme-r1/status", json={"triage": "acked", "note": "on it"}, headers=op
    )
    assert r.status_code == 200
    assert (r.json()["triage"], r.json()["triage_by"], r.json()["triage_note"]) == (
        "acked",
        "bob",
        "on it",
    )
    r = await client.put("/api/tasks/acme-r1/status", json={"triage": "ignored"}, headers=op)
    assert r.status_code == 200
    r = await client.put("/api/tasks/acme-r1/status", json={"triage": "resolved"}, headers=op)
    assert r.status_code == 409 and "ignored" in r.json()["detail"]
    # an ended run cannot be ended again with another status
    r = await client.put("/api/tasks/acme-r1/status", json={"status": "cancelled"}, headers=op)
    assert r.status_code == 409
    # a running run can
    t0 = time.time_ns()
    await backend.push(
        [*_streams([(t0, {"agent": "coder"}, line(event="run.start", run_id="live-1"))])],
        "acme",
    )
    r = await client.put("/api/tasks/live-1/status", json={"status": "cancelled"}, headers=op)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    for body, loc in [
        ({}, ["body"]),
        ({"status": "running"}, ["body", "status"]),
        ({"triage": "maybe"}, ["body", "triage"]),
    ]:
        r = await client.put("/api/tasks/acme-r2/status", json=body, headers=op)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc, r.text


def _streams(entries: list[tuple[int, dict[str, str], str]]) -> list[Any]:
    from backend.models import LogEntry, Stream

    return [Stream(labels, [LogEntry(ts, ln)]) for ts, labels, ln in entries]


async def test_summary_json_and_server_sent_events(client: httpx.AsyncClient) -> None:
    h = bearer(token())
    r = await client.get("/api/tasks/acme-r1/summary", headers=h)
    s = r.json()
    assert r.status_code == 200 and s["run_id"] == "acme-r1" and s["model"] == "extractive"
    assert "ToolTimeout" in s["text"]
    events: list[tuple[str, Any]] = []
    async with client.stream(
        "GET", "/api/tasks/acme-r1/summary", headers={**h, "Accept": "text/event-stream"}
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for ln in resp.aiter_lines():
            if ln.startswith("event: "):
                kind = ln[7:]
            elif ln.startswith("data: "):
                events.append((kind, orjson.loads(ln[6:])))
    assert events[-1][0] == "summary" and events[-1][1]["text"] == s["text"]
    assert "".join(d["text"] for k, d in events if k == "chunk") == s["text"]
    r = await client.get("/api/tasks/acme-r1/summary?model=x y", headers=bearer(token("admin")))
    assert r.status_code == 422


# ---------------------------------------------------------------- analytics, health, metrics


async def test_analytics_and_health(client: httpx.AsyncClient) -> None:
    h = bearer(token())
    ov = (await client.get("/api/analytics/overview?since=1h", headers=h)).json()
    assert ov["current"]["runs"] == 3 and ov["current"]["by_status"]["failed"] == 2
    fails = (await client.get("/api/analytics/failures?since=1h", headers=h)).json()
    tpl = [p["template"] for p in fails["patterns"] if p["kind"] == "error"]
    assert any("ToolTimeout" in t for t in tpl)
    perf = (await client.get("/api/analytics/performance?since=1h&buckets=4", headers=h)).json()
    assert perf["duration_by_agent"]["coder"]["count"] == 2
    cs = (await client.get("/api/analytics/cache-stats", headers=h)).json()
    assert cs[0]["level"] == "memory" and 0 <= cs[0]["hit_rate"] <= 1
    assert (await client.get("/api/analytics/overview?since=0s", headers=h)).status_code == 422
    hd = (await client.get("/health/detailed", headers=h)).json()
    assert hd["status"] == "ok" and hd["auth"] is True and hd["ready"] is True
    assert {s["name"] for s in hd["sources"]} >= {"logs", "tasks"}
    assert (await client.get("/health")).json()["status"] == "ok"


# ---------------------------------------------------------------- tail WebSocket


async def _frames(ws: Any, n: int, wait_s: float = 5.0) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        out.append(orjson.loads(await asyncio.wait_for(ws.recv(), wait_s)))
    return out


def _tail_entries(frame: dict[str, Any]) -> list[dict[str, Any]]:
    """An /api/logs/tail `entries` frame's entries, stream after stream."""
    return [e for s in frame["streams"] for e in s["entries"]]


async def test_tail_websocket_backfill_live_and_resume(
    server: RunningServer, client: httpx.AsyncClient, backend: Backend
) -> None:
    h = bearer(token())

    def url(**params: str) -> str:
        q = {"query": '{agent="coder"} |= "run.end"', **params}
        return server.ws_url + "/api/logs/tail?" + urlencode(q)

    async with websockets.connect(url(limit="1", since="1h"), additional_headers=h) as ws:
        start, backfill = await _frames(ws, 2)
        assert start["type"] == "start" and start["backfill_limit"] == 1
        assert start["backfill_skipped"] == 1  # two run.end lines for coder, one replayed
        assert backfill["type"] == "entries" and len(_tail_entries(backfill)) == 1
        now = time.time_ns()
        await backend.push(
            _streams([(now, {"agent": "coder"}, line(event="run.end", run_id="x1"))]), "acme"
        )
        (live,) = await _frames(ws, 1)
        assert [orjson.loads(e["line"])["run_id"] for e in _tail_entries(live)] == ["x1"]
        ((stream),) = live["streams"]
        assert stream["labels"]["agent"] == "coder" and set(stream["entries"][0]) == {
            "ts",
            "line",
            "metadata",
        }
        resume_at = live["next_start"]
    await backend.push(
        _streams([(time.time_ns(), {"agent": "coder"}, line(event="run.end", run_id="x2"))]),
        "acme",
    )
    async with websockets.connect(url(start=resume_at), additional_headers=h) as ws:
        start, backfill = await _frames(ws, 2)
        assert start["backfill_skipped"] == 0
        assert [orjson.loads(e["line"])["run_id"] for e in _tail_entries(backfill)] == ["x2"]
    # no token: refused before the upgrade (401); a bad query: 400
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(url()):
            pass
    assert err.value.response.status_code == 401
    bad = server.ws_url + "/api/logs/tail?query=nope"
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(bad, additional_headers=h):
            pass
    assert err.value.response.status_code == 400
    # another tenant's tail sees nothing of acme's lines
    other = bearer(token("viewer", "globex"))
    async with websockets.connect(url(limit="100"), additional_headers=other) as ws:
        start, backfill = await _frames(ws, 2)
        assert {orjson.loads(e["line"])["run_id"] for e in _tail_entries(backfill)} == {"globex-r1"}


async def test_tail_frames_group_entries_by_stream(server: RunningServer, backend: Backend) -> None:
    # limit 100: a line stored before the tail joined the store's reader comes as backfill
    q = urlencode({"query": '{agent=~"grp-.+"}', "limit": 100})
    async with websockets.connect(
        f"{server.ws_url}/api/logs/tail?{q}", additional_headers=bearer(token())
    ) as ws:
        await _frames(ws, 1)
        t0 = time.time_ns()
        sent = [(t0 + i, {"agent": f"grp-{'ab'[i % 2]}"}, f"line {i}") for i in range(6)]
        await backend.push(_streams(sent), "acme")
        got: dict[str, list[str]] = {}
        while sum(map(len, got.values())) < 6:
            (frame,) = await _frames(ws, 1)
            assert frame["type"] == "entries"
            assert int(frame["next_start"]) > max(int(e["ts"]) for e in _tail_entries(frame))
            for st in frame["streams"]:
                # each stream once per frame, with its labels; its lines in time order
                got.setdefault(st["labels"]["agent"], []).extend(e["line"] for e in st["entries"])
        assert got == {
            "grp-a": ["line 0", "line 2", "line 4"],
            "grp-b": ["line 1", "line 3", "line 5"],
        }


async def test_tail_without_backfill_gets_every_line_pushed_after_its_start_frame(
    server: RunningServer, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_tail = backend.tail

    def late_tail(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            await asyncio.sleep(0.3)  # the store's reader is joined well after `start` went out
            async for batch in real_tail(*args, **kwargs):
                yield batch

        return gen()

    monkeypatch.setattr(backend, "tail", late_tail)
    q = urlencode({"query": '{agent="late"}', "limit": 0, "since": "1h"})
    async with websockets.connect(
        f"{server.ws_url}/api/logs/tail?{q}", additional_headers=bearer(token())
    ) as ws:
        (start,) = await _frames(ws, 1)
        assert start["type"] == "start" and start["backfill_limit"] == 0
        await backend.push(_streams([(time.time_ns(), {"agent": "late"}, "right after")]), "acme")
        (frame,) = await _frames(ws, 1)
        assert [e["line"] for e in _tail_entries(frame)] == ["right after"]


async def test_a_tail_client_that_stops_reading_is_told_what_it_missed(tmp_path: Path) -> None:
    """A client that stops reading: once the socket's buffers are full the server's send waits,
    that tail's queue drops its oldest lines and says so; another tail gets every line."""
    be = await backend_at(tmp_path, {"server.jwt_secret": SECRET, "embedded.tail_buffer": 200})
    n, per_push, pad = 4000, 100, "x" * 8000  # 32 MB: far more than the sockets' buffers hold
    q = urlencode({"query": '{agent="slowpoke"}', "limit": 0})
    # A fixed, small receive buffer: autotuning could otherwise grow it to tcp_rmem's maximum.
    small = socket.socket()
    small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        async with run_server(create_app(be)) as srv:
            url, h = f"{srv.ws_url}/api/logs/tail?{q}", bearer(token())
            small.setblocking(False)
            await asyncio.get_running_loop().sock_connect(small, (srv.host, srv.port))
            async with (
                websockets.connect(url, additional_headers=h, max_queue=1, sock=small) as slow,
                websockets.connect(url, additional_headers=h) as fast,
            ):
                for ws in (slow, fast):
                    await _frames(ws, 1)
                await be.push(_streams([(time.time_ns(), {"agent": "slowpoke"}, "hi")]), "acme")
                for ws in (slow, fast):  # both follow the store's reader now
                    assert [e["line"] for e in _tail_entries((await _frames(ws, 1))[0])] == ["hi"]
                got_fast = 0
                for k in range(0, n, per_push):
                    t0 = time.time_ns()
                    batch = [
                        (t0 + i, {"agent": "slowpoke"}, f"{k + i} {pad}") for i in range(per_push)
                    ]
                    await be.push(_streams(batch), "acme")
                    while got_fast < k + per_push:  # the reading client keeps up, loses nothing
                        (frame,) = await _frames(ws=fast, n=1, wait_s=10)
                        assert frame["type"] == "entries"
                        got_fast += len(_tail_entries(frame))
                assert got_fast == n
                delivered: list[int] = []
                dropped = 0
                while len(delivered) + dropped < n:
                    (frame,) = await _frames(ws=slow, n=1, wait_s=10)
                    if frame["type"] == "dropped":
                        dropped += frame["count"]
                    else:
                        delivered += [int(e["line"].split()[0]) for e in _tail_entries(frame)]
                assert dropped > 0 and len(delivered) + dropped == n
                assert delivered == sorted(set(delivered))  # in order, none twice
                assert delivered[-1] == n - 1  # it ends with the newest
    finally:
        small.close()
        await be.close()


async def test_tail_reports_drops(tmp_path: Path) -> None:
    be = await backend_at(tmp_path, {"server.jwt_secret": SECRET, "embedded.tail_buffer": 10})
    try:
        async with run_server(create_app(be)) as srv:
            url = (
                srv.ws_url + "/api/logs/tail?" + urlencode({"query": '{agent="burst"}', "limit": 0})
            )
            async with websockets.connect(url, additional_headers=bearer(token())) as ws:
                await _frames(ws, 1)
                # Once a first line has come through, the tail follows the store's reader.
                await be.push(_streams([(time.time_ns(), {"agent": "burst"}, "hello")]), "acme")
                (hello,) = await _frames(ws, 1)
                assert [e["line"] for e in _tail_entries(hello)] == ["hello"]
                t0 = time.time_ns()
                await be.push(
                    _streams([(t0 + i, {"agent": "burst"}, f"line {i}") for i in range(500)]),
                    "acme",
                )
                got: list[dict[str, Any]] = []
                seen = 0
                while seen < 500:
                    frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                    got.append(frame)
                    seen += (
                        frame["count"] if frame["type"] == "dropped" else len(_tail_entries(frame))
                    )
                dropped = [f for f in got if f["type"] == "dropped"]
                assert dropped and sum(f["count"] for f in dropped) == 490
                assert int(dropped[0]["from"]) == t0
                lines = [e["line"] for f in got if f["type"] == "entries" for e in _tail_entries(f)]
                assert lines == [f"line {i}" for i in range(490, 500)]
    finally:
        await be.close()


# ---------------------------------------------------------------- auth off, startup checks


async def test_auth_off_on_loopback_without_a_secret(tmp_path: Path) -> None:
    be = await backend_at(tmp_path)
    try:
        assert check_bind("127.0.0.1", be.settings) is False
        async with run_server(create_app(be)) as srv, httpx.AsyncClient(base_url=srv.url) as c:
            who = (await c.get("/api/whoami")).json()
            assert who == {
                "subject": "anonymous",
                "role": "admin",
                "tenant": "fake",
                "method": "none",
            }
            who = (await c.get("/api/whoami", headers={"X-Scope-OrgID": "t2"})).json()
            assert who["tenant"] == "t2"
            assert (await c.get("/api/whoami", headers={"X-Scope-OrgID": "a|b"})).status_code == 400
            assert (await c.get("/health/detailed")).json()["auth"] is False
    finally:
        await be.close()


def _settings(tmp_path: Path, **over: object) -> Any:
    return load_config(None, env={}, overrides={"data_dir": str(tmp_path), **over}).settings


def test_refuses_to_start_unsafely(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="without authentication"):
        check_bind("0.0.0.0", _settings(tmp_path))
    for weak in ("short", "changeme", "x" * 40, "change-me-" + "0123456789" * 3):
        with pytest.raises(UsageError, match="not usable"):
            check_bind("127.0.0.1", _settings(tmp_path, **{"server.jwt_secret": weak}))
        with pytest.raises(UsageError, match="not usable"):
            check_bind("0.0.0.0", _settings(tmp_path, **{"server.jwt_secret": weak}))
    assert check_bind("0.0.0.0", _settings(tmp_path, **{"server.jwt_secret": SECRET})) is True


# ---------------------------------------------------------------- CLI: token, apikey, serve


def _cli(tmp_path: Path, argv: list[str], **over: object) -> tuple[int, str, str]:
    """Run one admin verb the way main() does (parser from add_parsers, a Ctx, asyncio.run)."""
    from backend.cli.main import Ctx

    parser = argparse.ArgumentParser()
    parser.add_argument("-o", "--output", default="text")
    sub = parser.add_subparsers(dest="verb")
    admin.add_parsers(lambda name, help_text: sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    ctx = Ctx(args, _settings(tmp_path, **{"server.jwt_secret": SECRET, **over}), out, err)
    fn = {"token": admin.cmd_token, "apikey": admin.cmd_apikey, "serve": admin.cmd_serve}
    code = asyncio.run(fn[args.verb](ctx))
    return code, out.getvalue(), err.getvalue()


def test_cli_token_prints_it_last(tmp_path: Path) -> None:
    code, out, err = _cli(
        tmp_path, ["token", "--role", "operator", "--tenant", "t9", "--ttl", "8h"]
    )
    assert code == 0 and "role operator, tenant t9" in err
    tok = out.strip().splitlines()[-1]
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert (claims["role"], claims["tenant"]) == ("operator", "t9")
    assert 8 * 3600 - 5 <= claims["exp"] - time.time() <= 8 * 3600
    with pytest.raises(UsageError):
        _cli(tmp_path, ["token", "--role", "admin"], **{"server.jwt_secret": ""})


async def test_cli_apikey_create_list_revoke(tmp_path: Path) -> None:
    code, out, err = await asyncio.to_thread(
        _cli,
        tmp_path,
        [
            "apikey",
            "create",
            "--tenant",
            "acme",
            "--role",
            "operator",
            "--name",
            "pushers",
        ],
    )
    secret = out.strip().splitlines()[-1]
    assert code == 0 and secret.startswith("alk_") and "shown once" in err
    raw = (tmp_path / "apikeys.sqlite3").read_bytes()
    random_part = secret.split("_", 2)[2]  # may itself hold "_"
    assert secret.encode() not in raw and random_part.encode() not in raw
    be = await backend_at(tmp_path, {"server.jwt_secret": SECRET})
    app = create_app(be)
    try:
        async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
            who = (await c.get("/api/whoami", headers=bearer(secret))).json()
            assert (who["method"], who["tenant"], who["role"]) == ("apikey", "acme", "operator")
            _, listed, _ = await asyncio.to_thread(_cli, tmp_path, ["apikey", "list"])
            key_id = secret.split("_")[1]
            assert key_id in listed and "pushers" in listed
            await asyncio.to_thread(_cli, tmp_path, ["apikey", "revoke", key_id])
            await asyncio.sleep(0)
            # another process revoked it: this one stops accepting it within VERIFY_CACHE_S
            app.state.agentlog.auth.keys._verified.clear()
            assert (await c.get("/api/whoami", headers=bearer(secret))).status_code == 401
    finally:
        await be.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_headless_with_a_minted_token_and_graceful_stop(tmp_path: Path) -> None:
    """`agentlog serve` as a process: answers with a minted token, refuses without one, stops
    cleanly on SIGTERM (exit 0)."""
    port = _free_port()
    script = (
        "import asyncio, sys\n"
        "from backend.config import load_config\n"
        "from backend.http.serve import serve\n"
        "s = load_config(None).settings\n"
        f"asyncio.run(serve(s, host='127.0.0.1', port={port}))\n"
    )
    env = {**os.environ, "JWT_SECRET": SECRET, "AGENTLOG_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        tok = token("viewer", "fake")
        r = httpx.get(f"http://127.0.0.1:{port}/api/tasks", headers=bearer(tok), timeout=5)
        assert r.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert "auth on" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list((tmp_path / "logs").glob("access-*.log"))
