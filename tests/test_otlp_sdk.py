"""A real OTLP client: the OpenTelemetry Python SDK's OTLP/HTTP log exporter (protobuf),
unmodified, pushing to `/v1/logs` of a real server on loopback. Records go through the SDK's
LoggerProvider and BatchLogRecordProcessor; the lines then come back through the facade
(`backend.query`) and the run appears in the task table (`backend.list_tasks`).

The exporter is synchronous (requests): `force_flush` and `shutdown` run in a worker thread so the
server, which runs in the test's event loop, can answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from http_server import RunningServer, backend_at, run_server
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from test_http_api import SECRET, bearer, token

from backend.facade import Backend
from backend.http.app import create_app
from backend.models import Direction, StreamsResult, TaskFilter

NS = 1_000_000_000
TENANT = "acme"  # the tenant of test_http_api's tokens


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    be = await backend_at(tmp_path, {"server.jwt_secret": SECRET})
    yield be
    await be.close()


@pytest.fixture
async def server(backend: Backend) -> AsyncIterator[RunningServer]:
    async with run_server(create_app(backend)) as srv:
        yield srv


def provider_for(server: RunningServer, compression: Compression) -> LoggerProvider:
    exporter = OTLPLogExporter(
        endpoint=f"{server.url}/v1/logs",
        headers=bearer(token("operator")),
        timeout=10,
        compression=compression,
    )
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "sdk-agent", "deployment.environment": "test"}),
        shutdown_on_exit=False,
    )
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, schedule_delay_millis=60_000)  # only force_flush sends
    )
    return provider


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
async def test_sdk_exporter_pushes_lines_and_runs(
    server: RunningServer, backend: Backend, compression: Compression
) -> None:
    run_id = f"run-sdk-{compression.value or 'plain'}"
    provider = provider_for(server, compression)
    logger = provider.get_logger("agents.checkout", "0.1")
    t0 = (time.time_ns() // NS - 30) * NS
    records = [
        ("starting", SeverityNumber.INFO, {"event": "run.start", "task": "refund"}),
        (
            "chat completion",
            SeverityNumber.INFO,
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 150,
            },
        ),
        ("payment tool failed", SeverityNumber.ERROR, {"exception.type": "PaymentDeclined"}),
        ("done", SeverityNumber.INFO, {"event": "run.end", "status": "failed"}),
    ]
    for i, (body, sev, attrs) in enumerate(records):
        logger.emit(
            timestamp=t0 + i * NS,
            severity_number=sev,
            severity_text=sev.name,
            body=body,
            attributes={"run_id": run_id, **attrs},
        )
    try:
        assert await asyncio.wait_for(asyncio.to_thread(provider.force_flush, 10_000), 20)
    finally:
        await asyncio.wait_for(asyncio.to_thread(provider.shutdown), 20)

    res = await backend.query(
        '{service_name="sdk-agent"}',
        t0 - NS,
        t0 + 10 * NS,
        direction=Direction.FORWARD,
        tenant=TENANT,
    )
    assert isinstance(res, StreamsResult)
    for s in res.streams:
        assert s.labels["service_name"] == "sdk-agent"
        assert s.labels["deployment_environment"] == "test"
        assert s.labels["level"] in ("info", "error")
    entries = sorted((e for s in res.streams for e in s.entries), key=lambda e: e.ts)
    assert [e.ts for e in entries] == [t0 + i * NS for i in range(4)]
    lines = [orjson.loads(e.line) for e in entries]
    assert [ln["msg"] for ln in lines] == [body for body, _, _ in records]
    assert all(ln["run_id"] == run_id for ln in lines)
    assert entries[2].metadata["exception_type"] == "PaymentDeclined"
    assert entries[2].metadata["scope_name"] == "agents.checkout"
    assert entries[0].metadata["telemetry_sdk_name"] == "opentelemetry"

    # nothing under the default tenant: the tenant came from the exporter's token
    other = await backend.query('{service_name="sdk-agent"}', t0 - NS, t0 + 10 * NS)
    assert isinstance(other, StreamsResult) and not other.streams

    page = await backend.list_tasks(TaskFilter(tenant=TENANT))
    (task,) = [t for t in page.tasks if t.run_id == run_id]
    assert (task.status.value, task.agent, task.task) == ("failed", "sdk-agent", "refund")
    assert (task.model, task.input_tokens, task.output_tokens) == ("gpt-4o-mini", 1200, 150)
    assert task.error_count == 1
