"""`/metrics` and `/metrics/json` over real loopback HTTP, parsed by prometheus_client's own text
parser: names and labels follow Prometheus conventions, values follow what happened (requests,
cache, runs by status and triage, failure patterns and their miner, tails, ingest, summaries with
the local OpenRouter stand-in, whoever asked for them), and no run id ever becomes a label."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx2 as httpx
import pytest
import websockets
from fake_openai import FakeOpenAI, Reply
from http_server import RunningServer, backend_at, run_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_http_api import SECRET, bearer, push_body, seed, token

from backend.cache import MemoryCache
from backend.facade import Backend
from backend.http.app import create_app
from backend.http.metrics import HttpMetrics, Scrape

NS = 1_000_000_000
RUN_IDS = {"acme-r1", "acme-r2", "acme-r3"}


@pytest.fixture
async def backend(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[Backend]:
    be = await backend_at(
        tmp_path,
        {
            "server.jwt_secret": SECRET,
            "summarizer.api_key": "sk-test",
            "summarizer.base_url": fake.base_url,
            "summarizer.model": "test/model-a",
            "summarizer.timeout": "5s",
        },
    )
    yield be
    aclose = getattr(be.summarizer, "aclose", None)
    if aclose is not None:
        await aclose()
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
        yield c


async def scrape(
    client: httpx.AsyncClient, role: str = "admin", tenant: str = "acme"
) -> list[Sample]:
    r = await client.get("/metrics", headers=bearer(token(role, tenant)))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return [s for fam in text_string_to_metric_families(r.text) for s in fam.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, (name, labels)
    return sum(found)


async def test_names_labels_and_conventions(client: httpx.AsyncClient) -> None:
    h = bearer(token("admin"))
    for rid in ["acme-r1", "acme-r2", "nope-1", "nope-2"]:
        await client.get(f"/api/tasks/{rid}", headers=h)
    r = await client.get("/metrics", headers=h)
    fams = list(text_string_to_metric_families(r.text))
    names = {f.name for f in fams}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names
    for fam in fams:
        assert fam.name.startswith(("agentlog_", "process_", "python_")), fam.name
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name
        for s in fam.samples:
            assert "run_id" not in s.labels
            assert not set(s.labels.values()) & (RUN_IDS | {"nope-1", "nope-2"}), s
            assert not s.name.endswith("_created")
    samples = [s for f in fams for s in f.samples]
    routes = {
        s.labels["route"]
        for s in samples
        if s.name == "agentlog_http_request_duration_seconds_count"
    }
    assert "/api/tasks/{run_id}" in routes
    assert (
        value(
            samples,
            "agentlog_http_request_duration_seconds_count",
            route="/api/tasks/{run_id}",
            status="404",
        )
        == 2
    )
    assert (
        value(
            samples,
            "agentlog_http_request_duration_seconds_count",
            route="/api/tasks/{run_id}",
            status="200",
            method="GET",
        )
        == 2
    )
    assert value(samples, "agentlog_build_info") == 1


async def test_runs_by_status_and_triage_and_patterns(client: httpx.AsyncClient) -> None:
    op = bearer(token("operator"))
    r = await client.put("/api/tasks/acme-r1/status", json={"triage": "acked"}, headers=op)
    assert r.status_code == 200
    s = await scrape(client)
    assert value(s, "agentlog_runs", tenant="acme", status="failed", triage="acked") == 1
    assert value(s, "agentlog_runs", tenant="acme", status="failed", triage="new") == 1
    assert value(s, "agentlog_runs", tenant="acme", status="succeeded", triage="new") == 1
    assert value(s, "agentlog_runs", tenant="acme", status="running") == 0
    assert value(s, "agentlog_failure_patterns", tenant="acme", kind="error") >= 1
    assert value(s, "agentlog_failure_patterns_new", tenant="acme", kind="error") >= 1
    # cache figures come from Backend.cache_stats, by level
    assert value(s, "agentlog_cache_hits_total", level="memory") >= 0
    assert value(s, "agentlog_cache_misses_total", level="memory") >= 1
    assert value(s, "agentlog_source_up", source="logs") == 1
    # ingest from the seed push
    assert value(s, "agentlog_ingest_entries_total", api="loki", outcome="accepted") == 11
    assert value(s, "agentlog_ingest_request_bytes_total", api="loki") > 0


async def test_tenant_families_are_the_callers(client: httpx.AsyncClient) -> None:
    await seed(client, "globex", [("g-1", "coder", True)])
    viewer = await scrape(client, "viewer", "globex")
    tenants = {s.labels["tenant"] for s in viewer if "tenant" in s.labels}
    assert tenants == {"globex"}
    admin = await scrape(client, "admin", "acme")
    assert {"acme", "globex"} <= {s.labels["tenant"] for s in admin if "tenant" in s.labels}


async def test_source_query_and_auth_metrics(client: httpx.AsyncClient) -> None:
    h = bearer(token())
    await client.get("/api/logs/query_range", params={"query": '{agent="coder"}'}, headers=h)
    await client.get("/api/logs/query_range", params={"query": "{agent="}, headers=h)
    await client.get("/api/tasks", headers=bearer("bad"))
    await client.get("/api/tasks")
    s = await scrape(client)
    assert value(s, "agentlog_source_query_duration_seconds_count", op="query_range") == 2
    assert value(s, "agentlog_source_query_errors_total", op="query_range", reason="bad_query") == 1
    assert value(s, "agentlog_http_auth_failures_total", reason="malformed") == 1
    assert value(s, "agentlog_http_auth_failures_total", reason="missing") == 1


async def test_tail_metrics(
    server: RunningServer, client: httpx.AsyncClient, backend: Backend
) -> None:
    h = bearer(token())
    q = urlencode({"query": '{agent="tailed"}', "limit": 0})
    async with websockets.connect(f"{server.ws_url}/api/logs/tail?{q}", additional_headers=h) as ws:
        await ws.recv()
        s = await scrape(client)
        assert value(s, "agentlog_tail_subscribers", api="api") == 1
        t0 = time.time_ns()
        body = push_body([(t0 + i, {"agent": "tailed"}, f"l{i}") for i in range(5)])
        await client.post("/loki/api/v1/push", json=body, headers=bearer(token("operator")))
        n = 0
        while n < 5:
            import orjson

            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            n += sum(len(st["entries"]) for st in frame["streams"])
    await asyncio.sleep(0.1)
    s = await scrape(client)
    assert value(s, "agentlog_tail_subscribers", api="api") == 0
    assert value(s, "agentlog_tail_lines_total", api="api") == 5
    assert value(s, "agentlog_tail_dropped_lines_total", api="api") == 0


async def test_summary_requests_tokens_and_cost_by_model(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.reply(
        Reply(
            chunks=["The run ", "failed."], prompt_tokens=1200, completion_tokens=80, cost=0.00042
        )
    )
    h = bearer(token())
    first = (await client.get("/api/tasks/acme-r1/summary", headers=h)).json()
    assert first["text"] == "The run failed." and first["model"] == "test/model-a"
    again = (await client.get("/api/tasks/acme-r1/summary", headers=h)).json()
    assert again["created_at"] == first["created_at"]  # replayed from the cache
    assert len(fake.requests) == 1
    s = await scrape(client)
    m = {"model": "test/model-a"}
    assert value(s, "agentlog_summary_requests_total", outcome="ok", **m) == 1
    assert value(s, "agentlog_summary_requests_total", outcome="cached", **m) == 1
    assert value(s, "agentlog_summary_tokens_total", type="input", **m) == 1200
    assert value(s, "agentlog_summary_tokens_total", type="output", **m) == 80
    assert value(s, "agentlog_summary_cost_usd_total", **m) == pytest.approx(0.00042)
    # the AI failing: a fallback, counted as such, under the requested model
    fake.reply(Reply.error(401, "bad key"))
    r = await client.get(
        "/api/tasks/acme-r3/summary",
        headers={**bearer(token("operator")), "Accept": "text/event-stream"},
    )
    assert "event: summary" in r.text and "AI summary failed" in r.text
    s = await scrape(client)
    assert value(s, "agentlog_summary_requests_total", outcome="fallback", model="extractive") == 1


async def test_summaries_made_outside_the_endpoint_count_once(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    m = {"model": "test/model-a"}
    # made through the facade, as the TUI beside the port makes them
    made = await backend.summary("acme-r1", tenant="acme")
    assert made.model == "test/model-a" and not made.error
    s = await scrape(client)
    assert value(s, "agentlog_summary_requests_total", outcome="ok", **m) == 1
    assert value(s, "agentlog_summary_tokens_total", type="input", **m) == 1200
    assert value(s, "agentlog_summary_tokens_total", type="output", **m) == 80
    assert value(s, "agentlog_summary_cost_usd_total", **m) == pytest.approx(0.00042)
    h = bearer(token())
    # the endpoint replaying it: a cached request, no tokens
    again = (await client.get("/api/tasks/acme-r1/summary", headers=h)).json()
    assert again["created_at"] == made.created_at
    # new ones through the endpoint (JSON and SSE): seen by the listener and the endpoint both,
    # counted once each
    assert (await client.get("/api/tasks/acme-r3/summary", headers=h)).status_code == 200
    r = await client.get("/api/tasks/acme-r2/summary", headers={**h, "Accept": "text/event-stream"})
    assert "event: summary" in r.text
    # a replay through the facade costs nothing: not counted
    await backend.summary("acme-r3", tenant="acme")
    s = await scrape(client)
    assert value(s, "agentlog_summary_requests_total", outcome="ok", **m) == 3
    assert value(s, "agentlog_summary_requests_total", outcome="cached", **m) == 1
    assert value(s, "agentlog_summary_tokens_total", type="input", **m) == 3 * 1200
    assert value(s, "agentlog_summary_tokens_total", type="output", **m) == 3 * 80
    assert value(s, "agentlog_summary_cost_usd_total", **m) == pytest.approx(3 * 0.00042)


async def test_following_a_backend_stops_on_close(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    metrics = HttpMetrics()
    metrics.follow_backend(backend)
    metrics.follow_backend(backend)  # again: replaces, does not add
    first = await backend.summary("acme-r1", tenant="acme")
    await metrics.close()
    await backend.summary("acme-r1", refresh=True, tenant="acme")
    s = parse(await metrics.collect(backend, ()))
    assert value(s, "agentlog_summary_requests_total", outcome="ok") == 1
    assert metrics.record_summary(first) is False  # already counted


class _HiddenStore:
    """Hides the embedded store's type, so the facade takes the read-and-mine path of other
    sources (Loki)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def parse(scraped: Scrape) -> list[Sample]:
    text = scraped.text().decode()
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


async def test_pattern_miner_lines_and_seconds(client: httpx.AsyncClient, backend: Backend) -> None:
    s = await scrape(client)
    lines, secs = "agentlog_pattern_miner_lines_total", "agentlog_pattern_miner_seconds_total"
    assert {frozenset(x.labels) for x in s if x.name in (lines, secs)} == {frozenset({"path"})}
    # the seed push: 11 lines (two of them errors) classified as the embedded store took them
    assert value(s, lines, path="ingest") == 11
    assert value(s, secs, path="ingest") > 0
    read_lines, read_secs = value(s, lines, path="read"), value(s, secs, path="read")
    now = time.time_ns()
    report = await backend.failure_patterns(now - 3600 * NS, now + NS, tenant="acme")
    assert report.error_lines == 2
    s = await scrape(client)
    assert value(s, lines, path="read") >= read_lines + 2  # the two error rows, at least
    assert value(s, secs, path="read") > read_secs
    assert value(s, lines, path="ingest") == 11


async def test_pattern_miner_read_path_of_other_sources(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    generic = Backend(
        backend.settings,
        logs=_HiddenStore(backend.logs),  # type: ignore[arg-type]
        tasks=backend.tasks,
        cache=MemoryCache(),
        summarizer=backend.summarizer,
    )
    metrics = HttpMetrics(source="loki")
    try:
        lines, secs = "agentlog_pattern_miner_lines_total", "agentlog_pattern_miner_seconds_total"
        s = parse(await metrics.collect(generic, ()))  # no tenants: no pattern report of its own
        assert value(s, lines, path="read") == 0 and value(s, lines, path="ingest") == 0
        now = time.time_ns()
        report = await generic.failure_patterns(now - 3600 * NS, now + NS, tenant="acme")
        assert report.error_lines == 2
        s = parse(await metrics.collect(generic, ()))
        # read back and classified: the two error lines (no retry or tool-call lines)
        assert value(s, lines, path="read") == 2
        assert value(s, secs, path="read") > 0
        assert value(s, lines, path="ingest") == 0  # nothing is classified on ingest here
    finally:
        await metrics.close()
        await generic.cache.close()


async def test_metrics_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics/json", headers=bearer(token()))
    body = r.json()
    fams = {f["name"]: f for f in body["metrics"]}
    assert fams["agentlog_runs"]["type"] == "gauge"
    runs = [s for s in fams["agentlog_runs"]["samples"] if s["labels"]["status"] == "failed"]
    assert sum(s["value"] for s in runs) == 2
    hist = fams["agentlog_http_request_duration_seconds"]
    assert any(s["labels"].get("le") == "+Inf" for s in hist["samples"])
    assert (await client.get("/metrics/json")).status_code == 401
    assert (await client.get("/metrics")).status_code == 401
