"""OTLP/HTTP log ingestion (`/v1/logs`, `/otlp/v1/logs`) over real loopback HTTP: protobuf and
JSON, gzip or not, mapped to streams as Loki does and to runs through the data contract (GenAI
attributes, trace ids), with OTLP's own responses and errors. Requests are built with the
opentelemetry-proto message classes, as the OpenTelemetry SDK's OTLP/HTTP exporter builds them."""

from __future__ import annotations

import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from http_server import RunningServer, backend_at, run_server
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from test_http_api import SECRET, bearer, token

from backend.facade import Backend
from backend.http.app import create_app
from backend.http.otlp import decode_otlp
from backend.http.push_decode import PushBodyError, PushLimits

NS = 1_000_000_000
PB = {"Content-Type": "application/x-protobuf"}
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


def av(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kvs(v)))
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[av(x) for x in v]))
    return AnyValue(string_value=str(v))


def kvs(d: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=av(v)) for k, v in d.items()]


def record(ts: int, body: Any, attrs: dict[str, Any] | None = None, **kw: Any) -> LogRecord:
    lr = LogRecord(time_unix_nano=ts, attributes=kvs(attrs or {}), **kw)
    if body is not None:
        lr.body.CopyFrom(av(body))
    return lr


def request(resource: dict[str, Any], records: list[LogRecord], scope: str = "agents") -> bytes:
    req = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=kvs(resource)),
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(name=scope, version="1.2"), log_records=records
                    )
                ],
            )
        ]
    )
    return req.SerializeToString()


def agent_run(run_id: str, t0: int) -> list[LogRecord]:
    return [
        record(
            t0,
            "starting",
            {"event": "run.start", "run_id": run_id, "task": "refund"},
            severity_number=9,
            severity_text="INFO",
        ),
        record(
            t0 + NS,
            "chat completion",
            {
                "run_id": run_id,
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.usage.input_tokens": 1500,
                "gen_ai.usage.output_tokens": 200,
            },
            severity_number=9,
        ),
        record(
            t0 + 2 * NS,
            "payment tool failed",
            {
                "run_id": run_id,
                "exception.type": "PaymentDeclined",
                "exception.message": "card 4242 declined",
            },
            severity_number=17,
            trace_id=TRACE,
            span_id=bytes.fromhex("eee19b7ec3c1b174"),
        ),
        record(
            t0 + 3 * NS,
            "done",
            {"event": "run.end", "run_id": run_id, "status": "failed"},
            severity_text="INFO",
        ),
    ]


RESOURCE = {
    "service.name": "checkout-agent",
    "deployment.environment": "prod",
    "process.pid": 4242,
    "telemetry.sdk.name": "opentelemetry",
}


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


OP = bearer(token("operator"))
VIEW = bearer(token("viewer"))


async def test_protobuf_export_maps_streams_metadata_and_runs(client: httpx.AsyncClient) -> None:
    t0 = (time.time_ns() // NS - 60) * NS
    r = await client.post(
        "/v1/logs", content=request(RESOURCE, agent_run("run-otlp-1", t0)), headers={**OP, **PB}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    resp = ExportLogsServiceResponse()
    resp.ParseFromString(r.content)
    assert not resp.HasField("partial_success")
    series = (await client.get("/loki/api/v1/series", headers=VIEW)).json()["data"]
    assert {tuple(sorted(s.items())) for s in series} == {
        tuple(
            sorted(
                {
                    "service_name": "checkout-agent",
                    "deployment_environment": "prod",
                    "agent": "checkout-agent",
                    "level": lvl,
                }.items()
            )
        )
        for lvl in ("info", "error")
    }
    q = await client.get(
        "/api/logs/query_range",
        params={"query": '{service_name="checkout-agent"}', "direction": "forward"},
        headers=VIEW,
    )
    entries = [e for s in q.json()["streams"] for e in s["entries"]]
    entries.sort(key=lambda e: int(e["ts"]))
    assert [int(e["ts"]) for e in entries] == [t0 + i * NS for i in range(4)]
    err = entries[2]
    assert orjson.loads(err["line"]) == {
        "msg": "payment tool failed",
        "run_id": "run-otlp-1",
        "exception.type": "PaymentDeclined",
        "exception.message": "card 4242 declined",
    }
    meta = err["metadata"]
    assert meta["trace_id"] == TRACE.hex() and meta["span_id"] == "eee19b7ec3c1b174"
    assert meta["process_pid"] == "4242" and meta["telemetry_sdk_name"] == "opentelemetry"
    assert meta["exception_type"] == "PaymentDeclined" and meta["scope_name"] == "agents"
    assert meta["severity_number"] == "17" and meta["scope_version"] == "1.2"
    assert orjson.loads(entries[1]["line"])["event"] == "llm.call"
    task = (await client.get("/api/tasks/run-otlp-1", headers=VIEW)).json()
    assert (task["status"], task["agent"], task["task"]) == ("failed", "checkout-agent", "refund")
    assert (task["model"], task["input_tokens"], task["output_tokens"]) == (
        "gpt-4o-mini",
        1500,
        200,
    )
    assert task["error_count"] == 1 and "PaymentDeclined" in task["last_error"]
    # the run's own logs (found by the facade through the agent label) give a summary
    s = (await client.get("/api/tasks/run-otlp-1/summary", headers=VIEW)).json()
    assert "PaymentDeclined" in s["text"]


async def test_json_gzip_and_loki_path_find_runs_by_trace_id(client: httpx.AsyncClient) -> None:
    t0 = time.time_ns() - 120 * NS
    doc = {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "planner"}},
                        {"key": "gen_ai.agent.name", "value": {"stringValue": "trip-planner"}},
                    ]
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "x"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(t0),
                                "severityText": "INFO",
                                "traceId": TRACE.hex(),
                                "body": {"stringValue": "plan started"},
                                "attributes": [
                                    {"key": "event", "value": {"stringValue": "run.start"}}
                                ],
                            },
                            {
                                "timeUnixNano": str(t0 + NS),
                                "severityNumber": 17,
                                "traceId": TRACE.hex(),
                                "body": {
                                    "kvlistValue": {
                                        "values": [
                                            {"key": "msg", "value": {"stringValue": "no flights"}},
                                            {"key": "n", "value": {"intValue": "3"}},
                                        ]
                                    }
                                },
                                "attributes": [],
                            },
                        ],
                    }
                ],
            }
        ]
    }
    for path, encode in (("/v1/logs", False), ("/otlp/v1/logs", True)):
        headers = {**OP, "Content-Type": "application/json"}
        if encode:  # the same run goes on, a minute later
            for lr in doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
                lr["timeUnixNano"] = str(int(lr["timeUnixNano"]) + 60 * NS)
        body = orjson.dumps(doc)
        if encode:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 200 and r.json() == {}, r.text
    task = (await client.get(f"/api/tasks/{TRACE.hex()}", headers=VIEW)).json()
    assert task["agent"] == "trip-planner" and task["error_count"] == 2
    r = await client.post(
        "/api/logs/search", json={"agents": ["trip-planner"], "levels": ["error"]}, headers=VIEW
    )
    lines = [orjson.loads(e["line"]) for e in r.json()["entries"]]
    assert lines == [{"msg": "no flights", "n": 3}] * 2


async def test_errors_are_otlp_status_messages(client: httpx.AsyncClient) -> None:
    body = request(RESOURCE, [record(time.time_ns(), "x")])
    r = await client.post("/v1/logs", content=body, headers={**OP, "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await client.post("/v1/logs", content=b"\xff\xff\xff", headers={**OP, **PB})
    assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
    assert r.content[:2] == b"\x08\x03"  # google.rpc.Status{code: INVALID_ARGUMENT}
    assert b"invalid OTLP protobuf" in r.content
    r = await client.post(
        "/v1/logs", content=b"{nope", headers={**OP, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == 3
    r = await client.post(
        "/v1/logs", content=b"{}", headers={**OP, "Content-Type": "application/json"}
    )
    assert r.status_code == 200
    assert (await client.post("/v1/logs", content=body, headers=PB)).status_code == 401
    assert (await client.post("/v1/logs", content=body, headers={**VIEW, **PB})).status_code == 403


async def test_partial_success(client: httpx.AsyncClient, backend: Backend) -> None:
    t0 = time.time_ns()
    crowded = {f"a{i}": i for i in range(200)}  # over Loki's 128 structured metadata pairs
    body = request(RESOURCE, [record(t0, "kept"), record(t0 + 1, "refused", crowded)])
    r = await client.post("/v1/logs", content=body, headers={**OP, **PB})
    resp = ExportLogsServiceResponse()
    resp.ParseFromString(r.content)
    assert r.status_code == 200 and resp.partial_success.rejected_log_records == 1
    assert "structured metadata" in resp.partial_success.error_message
    s = (await client.get("/metrics", headers=bearer(token("admin")))).text
    assert 'agentlog_ingest_entries_total{api="otlp",outcome="rejected"} 1.0' in s
    assert 'agentlog_ingest_entries_total{api="otlp",outcome="accepted"} 1.0' in s


# ---------------------------------------------------------------- the decoder itself


def test_decoder_keeps_plain_bodies_and_derives_levels() -> None:
    t0 = 1_700_000_000 * NS
    body = request(
        {"k8s.pod.name": "p-1"},
        [
            record(t0, "plain message", {"http.method": "GET"}, severity_number=13),
            record(t0 + 1, None, None, observed_time_unix_nano=t0 + 5),
            record(t0 + 2, '{"run_id": "r9", "x": 1}', {"gen_ai.request.model": "m"}),
            record(t0 + 3, {"deep": {"a": [1, {"b": True}]}}, {"event.name": "step"}),
        ],
    )
    out = decode_otlp(body, "application/x-protobuf", "", PushLimits(), now_ns=0)
    assert out.total == 4 and not out.rejected
    entries = sorted((e.ts, e.line, s.labels, e.metadata) for s in out.streams for e in s.entries)
    (_, line0, labels0, meta0), (_, line1, labels1, _), (_, line2, _, _), (_, line3, _, _) = entries
    assert line0 == "plain message" and meta0["http_method"] == "GET"
    assert labels0 == {
        "k8s_pod_name": "p-1",
        "service_name": "unknown_service",
        "agent": "unknown_service",
        "level": "warn",
    }
    assert line1 == "" and "level" not in labels1
    assert orjson.loads(line2) == {"run_id": "r9", "x": 1, "gen_ai.request.model": "m"}
    assert orjson.loads(line3) == {
        "deep": {"a": [1, {"b": True}]},
        "event.name": "step",
        "event": "step",
    }


def test_decoder_refuses_bad_bodies() -> None:
    lim = PushLimits(max_decoded_bytes=1000)
    for body, ctype, enc, status in [
        (b"\x0a\xff", "application/x-protobuf", "", 400),
        (b"[1,2]", "application/json", "", 400),
        (
            b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}',
            "application/json",
            "",
            400,
        ),
        (gzip.compress(b"\0" * 5000), "application/x-protobuf", "gzip", 413),
        (b"x", "application/x-protobuf", "br", 400),
        (b"x", "text/plain", "", 415),
    ]:
        with pytest.raises(PushBodyError) as err:
            decode_otlp(body, ctype, enc, lim)
        assert err.value.status == status, (body[:20], ctype)
    # OTLP/JSON with snake_case keys and int64 numbers also parses
    doc = {
        "resource_logs": [
            {
                "scope_logs": [
                    {
                        "log_records": [
                            {
                                "time_unix_nano": 5,
                                "body": {"string_value": "s"},
                                "span_id": "00ff00ff00ff00ff",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    out = decode_otlp(orjson.dumps(doc), "application/json", "", PushLimits())
    (stream,) = out.streams
    assert stream.entries[0].ts == 5 and stream.entries[0].metadata["span_id"] == "00ff00ff00ff00ff"
