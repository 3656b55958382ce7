"""Real third-party Loki pushers, unmodified, pushing into the embedded store's Loki API over
loopback HTTP; the lines (and structured metadata) must come back through query_range exactly.

- python-logging-loki (`LokiHandler`): its default emitter version "0" posts the legacy shape to
  `/api/prom/push`; version "1" posts the v1 JSON. It raises unless the answer is 204.
- loki-logger-handler (`LokiLoggerHandler`): gzipped JSON with extra keys in each stream object
  (`message_in_json_format`, `loki_metadata`) and structured metadata as a third value element.
- A protobuf + snappy push built with the protobuf library from Loki's push message definition
  (`logproto.PushRequest`; see test_http_loki_api.loki_push_request_class).

The pushers use `requests` (blocking), so they run in a worker thread while the server runs in
the test's event loop. The tests only observe them: what they sent is recorded by wrapping the
session's `post`, and their error hooks are watched.

Needs `python-logging-loki` and `loki-logger-handler` installed (tested with 0.3.1 and 1.1.2):
skipped without them on a developer's machine, failed in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from http_server import RunningServer, backend_at, run_server
from test_http_loki_api import loki_push_request_class

from backend.facade import Backend
from backend.http.app import create_app
from backend.models import RunStatus, TaskFilter

try:
    import logging_loki  # type: ignore[import-untyped, unused-ignore]
    from loki_logger_handler import (  # type: ignore[import-untyped, unused-ignore]
        loki_logger_handler,
    )
except ImportError as exc:  # as tests/conftest.py does for services: skip locally, fail in CI
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the third-party pushers are not installed ({exc}), and CI=true")
    pytest.skip(f"the third-party pushers are not installed: {exc}", allow_module_level=True)

NS = 1_000_000_000
CATEGORIZE = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    be = await backend_at(tmp_path)
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


def record_posts(session: Any) -> list[dict[str, Any]]:
    """Wrap a requests.Session's post to keep what was sent (and the status), calling through."""
    sent: list[dict[str, Any]] = []
    original: Callable[..., Any] = session.post

    def post(url: str, *args: Any, **kwargs: Any) -> Any:
        resp = original(url, *args, **kwargs)
        sent.append({"url": url, "status": resp.status_code, **kwargs})
        return resp

    session.post = post
    return sent


async def query(
    client: httpx.AsyncClient, q: str, *, categorize: bool = True, **params: Any
) -> list[dict[str, Any]]:
    r = await client.get(
        "/loki/api/v1/query_range",
        params={"query": q, "direction": "forward", "limit": 1000, "since": "10m", **params},
        headers=CATEGORIZE if categorize else {},
    )
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


async def wait_for_lines(
    client: httpx.AsyncClient, q: str, n: int, within: float = 15.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        result = await query(client, q)
        if sum(len(s["values"]) for s in result) >= n or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


def make_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"{name}.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


# ---------------------------------------------------------------------- python-logging-loki


@pytest.mark.parametrize("version", [None, "1"])  # None: the library's default, "0" (legacy)
async def test_python_logging_loki(
    server: RunningServer, client: httpx.AsyncClient, backend: Backend, version: str | None
) -> None:
    path = "/api/prom/push" if version is None else "/loki/api/v1/push"
    app_label = f"pll-{version or 'default'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # it warns that "0" is deprecated
        handler = logging_loki.LokiHandler(
            url=server.url + path, tags={"application": app_label}, version=version
        )
    assert handler.emitter.__class__.__name__ == (
        "LokiEmitterV0" if version is None else "LokiEmitterV1"
    )
    failures: list[BaseException | None] = []
    handler.handleError = lambda record: failures.append(sys.exc_info()[1])
    sent = record_posts(handler.emitter.session)
    logger = make_logger("pll", handler)
    run_id = f"run-{uuid.uuid4().hex[:6]}"
    messages = [
        json.dumps({"event": "run.start", "run_id": run_id, "task": "pusher test"}),
        'plain text with ünïcode ✓ and <html> & "quotes"',
        json.dumps({"event": "run.end", "run_id": run_id, "status": "succeeded"}),
    ]
    levels = [logging.INFO, logging.WARNING, logging.INFO]
    for level, msg in zip(levels, messages, strict=True):
        await asyncio.to_thread(logger.log, level, msg)
        await asyncio.sleep(0.002)  # distinct microsecond timestamps
    handler.emitter.close()

    assert failures == []  # the library raises on anything but 204
    assert [s["status"] for s in sent] == [204, 204, 204]
    if version is None:
        stream = sent[0]["json"]["streams"][0]
        assert set(stream) == {"labels", "entries"}  # the legacy shape
        assert set(stream["entries"][0]) == {"ts", "line"}

    result = await query(client, f'{{application="{app_label}"}}', categorize=False)
    got = sorted((v[0], v[1], s["stream"]) for s in result for v in s["values"])
    assert [line for _, line, _ in got] == messages
    assert [labels["severity"] for _, _, labels in got] == ["info", "warning", "info"]
    for _, _, labels in got:
        assert labels["application"] == app_label and labels["logger"] == logger.name
    # The timestamps are what the library sent (microseconds for "0", ns for "1").
    sent_ts = []
    for s in sent:
        (stream,) = s["json"]["streams"]
        if version is None:
            sent_ts.append(stream["entries"][0]["ts"])
        else:
            sent_ts.append(stream["values"][0][0])
    if version is not None:
        assert [ts for ts, _, _ in got] == sent_ts
    else:
        from backend.logql.timefmt import parse_time

        assert [int(ts) for ts, _, _ in got] == [parse_time(t, 0) for t in sent_ts]
    # The run events reached the task table.
    page = await backend.list_tasks(TaskFilter(run_ids=(run_id,)))
    assert [t.status for t in page.tasks] == [RunStatus.SUCCEEDED]


# ---------------------------------------------------------------------- loki-logger-handler


async def test_loki_logger_handler(
    server: RunningServer, client: httpx.AsyncClient, backend: Backend
) -> None:
    handler = loki_logger_handler.LokiLoggerHandler(
        url=server.url + "/loki/api/v1/push",
        labels={"application": "llh", "env": "test"},
        label_keys={},
        timeout=0.1,  # its flush interval
        compressed=True,
        enable_structured_loki_metadata=True,
        loki_metadata={"service": "pusher-test"},
        loki_metadata_keys=["run_id"],
    )
    sent = record_posts(handler.request.session)
    logger = make_logger("llh", handler)
    logger.info("first <line> & more", extra={"run_id": "r-42", "step": 1})
    logger.warning("second ünïcode ✓", extra={"run_id": "r-43"})
    logger.error("third, no run id")

    result = await wait_for_lines(client, '{application="llh"}', 3)
    assert not handler.error
    assert sent and all(s["status"] == 204 for s in sent)
    # What it sent: gzip, JSON, extra keys in the stream objects, metadata as the 3rd element.
    assert sent[0]["headers"]["Content-Encoding"] == "gzip"
    pushed_values = []
    for s in sent:
        doc = json.loads(gzip.decompress(s["data"]))
        for stream in doc["streams"]:
            assert {"message_in_json_format", "loki_metadata"} <= set(stream)
            assert stream["stream"] == {"application": "llh", "env": "test"}
            pushed_values.extend(stream["values"])
    assert all(len(v) == 3 for v in pushed_values)

    assert [s["stream"] for s in result] == [{"application": "llh", "env": "test"}]
    got = result[0]["values"]
    expected = [
        [ts, line, {"structuredMetadata": meta}]
        for ts, line, meta in sorted(pushed_values, key=lambda v: int(v[0]))
    ]
    assert got == expected  # lines and metadata exactly as pushed
    assert [json.loads(v[1])["message"] for v in got] == [
        "first <line> & more",
        "second ünïcode ✓",
        "third, no run id",
    ]
    assert got[0][2]["structuredMetadata"] == {"service": "pusher-test", "run_id": "r-42"}
    assert got[2][2]["structuredMetadata"] == {"service": "pusher-test"}
    logger.removeHandler(handler)


# ---------------------------------------------------------------------- protobuf + snappy


async def test_protobuf_snappy_push(client: httpx.AsyncClient) -> None:
    import cramjam

    push_request = loki_push_request_class()
    req = push_request()
    t0 = (time.time_ns() // NS - 30) * NS
    expected: dict[str, list[list[Any]]] = {}
    for job in ("proto-a", "proto-b"):
        stream = req.streams.add()
        stream.labels = f'{{job="{job}", team="x"}}'
        for i in range(5):
            entry = stream.entries.add()
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(t0 + i * 1001, NS)
            entry.line = f"{job} line {i} <ü>"
            meta = {"run_id": f"{job}-{i}"} if i % 2 else {}
            for k, v in meta.items():
                entry.structuredMetadata.add(name=k, value=v)
            extra = {"structuredMetadata": meta} if meta else {}
            expected.setdefault(job, []).append([str(t0 + i * 1001), entry.line, extra])
    body = bytes(cramjam.snappy.compress_raw(req.SerializeToString()))
    r = await client.post(
        "/loki/api/v1/push", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    assert r.status_code == 204, r.text
    for job, values in expected.items():
        result = await query(client, f'{{job="{job}"}}')
        assert result == [{"stream": {"job": job, "team": "x"}, "values": values}]
