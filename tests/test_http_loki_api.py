"""The Loki-compatible HTTP API over real loopback HTTP: a uvicorn server in the test's event loop
(tests/http_server.py), httpx2 and websockets as clients. Reference: loki-http-api.md."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cramjam
import httpx2 as httpx
import orjson
import pytest
import websockets
from google.protobuf import (  # type: ignore[import-untyped, unused-ignore]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    timestamp_pb2,
)
from http_server import RunningServer, backend_at, run_server

from backend.config import load_config
from backend.errors import UsageError
from backend.facade import Backend
from backend.http.app import create_app
from backend.http.loki_api import fmt_time, fmt_value, format_logql
from backend.http.push_decode import PushLimits, parse_label_string
from backend.http.serve import check_bind, is_loopback, serve
from backend.logql.parser import parse
from backend.models import RunStatus, TaskFilter

NS = 1_000_000_000
CATEGORIZE = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}
ROOT = Path(__file__).resolve().parent.parent


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


def base_ts() -> int:
    """A minute ago, on a whole second: inside the default 1 h window, well within retention."""
    return (time.time_ns() // NS - 60) * NS


def v1(labels: dict[str, str], *values: list[Any]) -> dict[str, Any]:
    return {"stream": labels, "values": list(values)}


async def push_json(
    client: httpx.AsyncClient, *streams: dict[str, Any], tenant: str | None = None
) -> httpx.Response:
    headers = {"X-Scope-OrgID": tenant} if tenant else {}
    return await client.post("/loki/api/v1/push", json={"streams": list(streams)}, headers=headers)


async def query_range(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    headers = params.pop("headers", {})
    r = await client.get("/loki/api/v1/query_range", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "success"
    data: dict[str, Any] = body["data"]
    return data


def values_of(data: dict[str, Any]) -> list[list[Any]]:
    """All values of a streams result, oldest first."""
    out = [v for s in data["result"] for v in s["values"]]
    return sorted(out, key=lambda v: int(v[0]))


# ---------------------------------------------------------------------- push round trips

LINES = [
    "plain line",
    'json {"level":"error","msg":"<b>tags</b> & ampersands"}',
    "ünïcödé ✓ 日本語",
    'quotes " and \\ backslashes\tand tabs',
]


def sample_values(t0: int) -> list[list[Any]]:
    return [
        [str(t0 + 1), LINES[0]],
        [str(t0 + 2), LINES[1], {"trace_id": "abc", "run_id": "r-1"}],
        [str(t0 + 3), LINES[2], {}],
        [str(t0 + 4), LINES[3], {"trace_id": "def"}],
    ]


def expected_categorized(values: list[list[Any]]) -> list[list[Any]]:
    return [
        [v[0], v[1], {"structuredMetadata": v[2]} if len(v) == 3 and v[2] else {}] for v in values
    ]


async def test_push_json_round_trip_exact_with_metadata(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    values = sample_values(t0)
    r = await push_json(client, v1({"job": "api", "env": "prod"}, *values))
    assert r.status_code == 204 and r.content == b""
    data = await query_range(client, query='{job="api"}', direction="forward", headers=CATEGORIZE)
    assert data["resultType"] == "streams"
    assert data["encodingFlags"] == ["categorize-labels"]
    assert [s["stream"] for s in data["result"]] == [{"job": "api", "env": "prod"}]
    assert data["result"][0]["values"] == expected_categorized(values)
    # Without the flag, structured metadata is merged into the stream labels (Loki's default).
    plain = await query_range(client, query='{job="api"}', direction="forward")
    by_ts = {v[0]: (s["stream"], v) for s in plain["result"] for v in s["values"]}
    assert by_ts[str(t0 + 2)][0] == {
        "job": "api",
        "env": "prod",
        "trace_id": "abc",
        "run_id": "r-1",
    }
    assert by_ts[str(t0 + 1)][1] == [str(t0 + 1), LINES[0]]
    assert "encodingFlags" not in plain
    assert plain["stats"]["summary"]["totalEntriesReturned"] == 4
    assert plain["stats"]["summary"]["totalLinesProcessed"] == 4


async def test_categorize_labels_parsed_and_flag_echo(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    await push_json(
        client,
        v1({"job": "cat"}, [str(t0), '{"lvl":"warn","n":1}', {"run_id": "r1"}]),
        v1({"job": "cat", "env": "b"}, [str(t0 + 1), '{"lvl":"info"}']),
    )
    headers = {"X-Loki-Response-Encoding-Flags": "categorize-labels, unknown"}
    data = await query_range(client, query='{job="cat"} | json', headers=headers)
    assert data["encodingFlags"] == ["categorize-labels", " unknown"]  # echoed, not trimmed
    warn = {"structuredMetadata": {"run_id": "r1"}, "parsed": {"lvl": "warn", "n": "1"}}
    by_size = sorted(data["result"], key=lambda s: len(s["stream"]))  # stream order is free
    assert by_size == [
        {"stream": {"job": "cat"}, "values": [[str(t0), '{"lvl":"warn","n":1}', warn]]},
        {
            "stream": {"job": "cat", "env": "b"},
            "values": [[str(t0 + 1), '{"lvl":"info"}', {"parsed": {"lvl": "info"}}]],
        },
    ]
    # Only the exact flag has an effect; the header is still echoed.
    data = await query_range(
        client, query='{job="cat"}', headers={"X-Loki-Response-Encoding-Flags": "other"}
    )
    assert data["encodingFlags"] == ["other"]
    assert all(len(v) == 2 for s in data["result"] for v in s["values"])


async def test_html_is_escaped_like_loki(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    await push_json(client, v1({"job": "html"}, [str(t0), "<a> & <b>"]))
    r = await client.get("/loki/api/v1/query_range", params={"query": '{job="html"}'})
    assert b"\\u003ca\\u003e \\u0026 \\u003cb\\u003e" in r.content
    assert r.json()["data"]["result"][0]["values"][0][1] == "<a> & <b>"


@pytest.mark.parametrize("encoding", ["gzip", "deflate-zlib", "deflate-raw"])
async def test_push_compressed_json(client: httpx.AsyncClient, encoding: str) -> None:
    t0 = base_ts()
    values = sample_values(t0)
    raw = orjson.dumps({"streams": [v1({"job": encoding}, *values)]})
    if encoding == "gzip":
        body = gzip.compress(raw)
    elif encoding == "deflate-zlib":
        body = zlib.compress(raw)
    else:
        c = zlib.compressobj(wbits=-15)
        body = c.compress(raw) + c.flush()
    r = await client.post(
        "/loki/api/v1/push",
        content=body,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Content-Encoding": encoding.split("-")[0],
        },
    )
    assert r.status_code == 204, r.text
    data = await query_range(
        client, query=f'{{job="{encoding}"}}', direction="forward", headers=CATEGORIZE
    )
    assert data["result"][0]["values"] == expected_categorized(values)


# Loki's pkg/push/push.proto, as the protobuf library builds it from a descriptor (no protoc).
def loki_push_request_class() -> Any:
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="pkg/push/push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )

    def msg(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, num, typ, label, type_name in fields:
            f = m.field.add(name=fname, number=num, type=typ, label=label)
            if type_name:
                f.type_name = type_name

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg(
        "PushRequest",
        ("streams", 1, F.TYPE_MESSAGE, rep, ".logproto.StreamAdapter"),
        ("format", 2, F.TYPE_STRING, opt, ""),
    )
    msg(
        "StreamAdapter",
        ("labels", 1, F.TYPE_STRING, opt, ""),
        ("entries", 2, F.TYPE_MESSAGE, rep, ".logproto.EntryAdapter"),
        ("hash", 3, F.TYPE_UINT64, opt, ""),
    )
    msg(
        "EntryAdapter",
        ("timestamp", 1, F.TYPE_MESSAGE, opt, ".google.protobuf.Timestamp"),
        ("line", 2, F.TYPE_STRING, opt, ""),
        ("structuredMetadata", 3, F.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"),
        ("parsed", 4, F.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"),
    )
    msg(
        "LabelPairAdapter",
        ("name", 1, F.TYPE_STRING, opt, ""),
        ("value", 2, F.TYPE_STRING, opt, ""),
    )
    pool = descriptor_pool.DescriptorPool()
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    pool.Add(ts)
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


def protobuf_body(labels: str, values: list[list[Any]]) -> bytes:
    req = loki_push_request_class()()
    stream = req.streams.add()
    stream.labels = labels
    for v in values:
        e = stream.entries.add()
        e.timestamp.seconds, e.timestamp.nanos = divmod(int(v[0]), NS)
        e.line = v[1]
        for k, val in (v[2] if len(v) == 3 else {}).items():
            e.structuredMetadata.add(name=k, value=val)
    return bytes(cramjam.snappy.compress_raw(req.SerializeToString()))


@pytest.mark.parametrize("content_type", ["application/x-protobuf", None])
async def test_push_protobuf_snappy_round_trip(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    t0 = base_ts()
    values = sample_values(t0)
    body = protobuf_body('{job="proto", env="a \\"quoted\\" value"}', values)
    headers = {"Content-Type": content_type} if content_type else {}
    r = await client.post("/loki/api/v1/push", content=body, headers=headers)
    assert r.status_code == 204, r.text
    data = await query_range(client, query='{job="proto"}', direction="forward", headers=CATEGORIZE)
    assert data["result"][0]["stream"] == {"job": "proto", "env": 'a "quoted" value'}
    assert data["result"][0]["values"] == expected_categorized(values)


async def test_push_protobuf_gzip_content_encoding(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    body = gzip.compress(protobuf_body('{job="protogz"}', [[str(t0), "x", {"k": "v"}]]))
    r = await client.post(
        "/loki/api/v1/push",
        content=body,
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 204, r.text
    data = await query_range(client, query='{job="protogz"}', headers=CATEGORIZE)
    assert data["result"][0]["values"] == [[str(t0), "x", {"structuredMetadata": {"k": "v"}}]]


async def test_push_legacy_shape(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    stamp = datetime.fromtimestamp(t0 / NS, UTC).isoformat()  # 2026-...+00:00
    body = {
        "streams": [
            {
                "labels": '{app="legacy",level="info"}',
                "entries": [{"ts": stamp, "line": "old style"}],
            }
        ]
    }
    r = await client.post("/api/prom/push", json=body)
    assert r.status_code == 204, r.text
    data = await query_range(client, query='{app="legacy"}')
    assert data["result"] == [
        {"stream": {"app": "legacy", "level": "info"}, "values": [[str(t0), "old style"]]}
    ]


async def test_pushed_run_events_reach_the_task_table(
    client: httpx.AsyncClient, backend: Backend
) -> None:
    t0 = base_ts()
    lines = [
        '{"event":"run.start","run_id":"run-http-1","task":"fix bug"}',
        '{"event":"error","run_id":"run-http-1","error.type":"Timeout","error.message":"boom"}',
        '{"event":"run.end","run_id":"run-http-1","status":"failed"}',
    ]
    values = [[str(t0 + i * NS), line] for i, line in enumerate(lines)]
    r = await push_json(client, v1({"agent": "planner"}, *values))
    assert r.status_code == 204
    page = await backend.list_tasks(TaskFilter(run_ids=("run-http-1",)))
    assert len(page.tasks) == 1
    task = page.tasks[0]
    assert (task.agent, task.status, task.error_count) == ("planner", RunStatus.FAILED, 1)
    # Another tenant's task table is separate.
    r = await push_json(client, v1({"agent": "coder"}, *values), tenant="team-b")
    page = await backend.list_tasks(TaskFilter(run_ids=("run-http-1",), tenant="team-b"))
    assert page.tasks[0].agent == "coder"


# ---------------------------------------------------------------------- push errors


async def test_push_ts_must_be_a_string(client: httpx.AsyncClient) -> None:
    r = await push_json(client, v1({"job": "x"}, [base_ts(), "numeric ts"]))
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/plain")
    assert "timestamp must be a JSON string" in r.text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"streams": {}}', "streams must be an array"),
        (b'{"streams": [{"stream": {"a": 1}, "values": []}]}', "must be a string"),
        (b'{"streams": [{"stream": {"a": "b"}, "values": [["12x", "l"]]}]}', "nanoseconds"),
        (b'{"streams": [{"stream": {"a": "b"}, "values": [["1"]]}]}', "[ts, line]"),
    ],
)
async def test_push_bad_json(client: httpx.AsyncClient, body: bytes, needle: str) -> None:
    r = await client.post(
        "/loki/api/v1/push", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert needle in r.text


async def test_push_no_labels_and_partial_failure(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    r = await push_json(client, v1({}, [str(t0), "orphan"]))
    assert r.status_code == 400
    assert r.text.splitlines() == [
        f"entry with timestamp {datetime.fromtimestamp(t0 / NS, UTC):%Y-%m-%d %H:%M:%S} "
        "+0000 UTC ignored, reason: 'error at least one label pair is required per stream',",
        "user 'fake', total ignored: 1 out of 1",
    ]
    # Partial failure: the valid entries are kept, the others listed.
    old = t0 - 30 * 86400 * NS
    r = await push_json(
        client,
        v1({"job": "partial"}, [str(t0), "kept"], [str(old), "too old"]),
        v1({"bad-name": "x"}, [str(t0), "bad label"]),
    )
    assert r.status_code == 400
    lines = r.text.splitlines()
    assert len(lines) == 3 and lines[-1] == "user 'fake', total ignored: 2 out of 3"
    assert all(line.startswith("entry with timestamp ") for line in lines[:2])
    data = await query_range(client, query='{job="partial"}')
    assert values_of(data) == [[str(t0), "kept"]]


async def test_push_structured_metadata_limits(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    many = {f"k{i}": "v" for i in range(129)}
    r = await push_json(client, v1({"job": "meta"}, [str(t0), "a", many], [str(t0 + 1), "b"]))
    assert r.status_code == 400
    assert "too many structured metadata labels: '129', limit: '128'" in r.text
    assert values_of(await query_range(client, query='{job="meta"}')) == [[str(t0 + 1), "b"]]


async def test_push_unsupported_encoding(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/loki/api/v1/push",
        content=b"{}",
        headers={"Content-Type": "application/json", "Content-Encoding": "br"},
    )
    assert r.status_code == 400
    assert "Content-Encoding 'br' not supported" in r.text
    # snappy is tolerated (it does nothing), as in Loki
    r = await client.post(
        "/loki/api/v1/push",
        content=b'{"streams":[]}',
        headers={"Content-Type": "application/json", "Content-Encoding": "snappy"},
    )
    assert r.status_code == 204


async def test_push_bad_protobuf_and_labels(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/loki/api/v1/push",
        content=b"\x05garbage",
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 400 and "snappy" in r.text
    body = protobuf_body("job=nobraces", [[str(base_ts()), "x"]])
    r = await client.post("/loki/api/v1/push", content=body)
    assert r.status_code == 400 and "invalid labels" in r.text


async def test_push_size_limits(backend: Backend) -> None:
    limits = PushLimits(max_body_bytes=4096, max_decoded_bytes=64 * 1024)
    async with (
        run_server(create_app(backend, push_limits=limits)) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        big = orjson.dumps({"streams": [v1({"job": "big"}, [str(base_ts()), "x" * 5000])]})
        r = await client.post(
            "/loki/api/v1/push", content=big, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        # A gzip bomb: 3 KB on the wire, 3 MB inflated.
        bomb = gzip.compress(b" " * 3_000_000)
        assert len(bomb) < 4096
        r = await client.post(
            "/loki/api/v1/push",
            content=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 413 and "decompressed" in r.text
        # A snappy block that announces 10 MB is refused before it is inflated.
        r = await client.post(
            "/loki/api/v1/push", content=bytes(cramjam.snappy.compress_raw(b"\0" * 10_000_000))
        )
        assert r.status_code == 413
        # Under the limits all is well.
        small = orjson.dumps({"streams": [v1({"job": "small"}, [str(base_ts()), "ok"])]})
        r = await client.post(
            "/loki/api/v1/push",
            content=gzip.compress(small),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert r.status_code == 204


def test_label_string_parser() -> None:
    assert parse_label_string('{a="b", c="d\\"e\\\\", _f = "\\u00e9" ,}') == {
        "a": "b",
        "c": 'd"e\\',
        "_f": "é",
    }
    assert parse_label_string("{}") == {}
    for bad in ['{a="b"', "a=b", '{a="b" c="d"}', '{1a="b"}', '{a="b", a="c"}']:
        with pytest.raises(ValueError):
            parse_label_string(bad)


# ---------------------------------------------------------------------- query_range


async def seed(client: httpx.AsyncClient, n: int = 150, job: str = "seed") -> int:
    """`n` lines, one per 100 ms, ending a minute ago; returns the first timestamp."""
    t0 = base_ts() - n * NS // 10
    values = [[str(t0 + i * NS // 10), f"line {i}"] for i in range(n)]
    r = await push_json(client, v1({"job": job}, *values))
    assert r.status_code == 204
    return t0


async def test_query_range_defaults(client: httpx.AsyncClient) -> None:
    t0 = await seed(client)
    old = base_ts() - 2 * 3600 * NS  # outside the default window (end - 1h)
    await push_json(client, v1({"job": "seed"}, [str(old), "two hours ago"]))
    data = await query_range(client, query='{job="seed"}')
    got = [v for s in data["result"] for v in s["values"]]
    assert len(got) == 100  # default limit
    assert got[0] == [str(t0 + 149 * NS // 10), "line 149"]  # default direction: backward
    assert [int(v[0]) for v in got] == sorted((int(v[0]) for v in got), reverse=True)
    # since widens the window
    data = await query_range(client, query='{job="seed"}', since="3h", limit=1000)
    assert len(values_of(data)) == 151
    # POST with a form body works the same
    r = await client.post("/loki/api/v1/query_range", data={"query": '{job="seed"}', "limit": "5"})
    assert r.status_code == 200 and len(r.json()["data"]["result"][0]["values"]) == 5


async def test_query_range_time_formats(client: httpx.AsyncClient) -> None:
    t0 = await seed(client, 50)
    start, end = t0 + 10 * NS // 10, t0 + 20 * NS // 10  # lines 10..19
    dt = datetime.fromtimestamp(start // NS, UTC)
    forms = [
        {"start": str(start), "end": str(end)},  # ns
        {"start": f"{start / NS:.1f}", "end": f"{end / NS:.1f}"},  # float seconds
        {"start": dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start % NS:09d}Z", "end": f"{end}"},
    ]
    for form in forms:
        data = await query_range(client, query='{job="seed"}', direction="FORWARD", **form)
        lines = [v[1] for v in values_of(data)]
        assert lines == [f"line {i}" for i in range(10, 20)], form
    # whole seconds (<= 10 digits) are seconds
    data = await query_range(
        client, query='{job="seed"}', start=str(t0 // NS), end=str(t0 // NS + 1), limit=1000
    )
    assert [v[1] for v in values_of(data)] == [f"line {i}" for i in range(10)]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"query": '{job="x"', "limit": "1"}, "parse error at line 1, col 9"),
        ({"query": '{job="x"}', "start": "200", "end": "100"}, "end timestamp must not be before"),
        ({"query": '{job="x"}', "limit": "0"}, "limit must be a positive value"),
        ({"query": '{job="x"}', "limit": "-3"}, "limit must be a positive value"),
        ({"query": '{job="x"}', "step": "0"}, "zero or negative query resolution step"),
        (
            {"query": '{job="x"}', "start": "0", "end": "100000", "step": "1"},
            "exceeded maximum resolution of 11,000 points",
        ),
        ({"query": '{job="x"}', "direction": "sideways"}, "invalid direction"),
        ({"query": '{job="x"}', "start": "yesterday"}, "start: cannot parse 'yesterday'"),
        ({"query": '{job="x"}', "since": "forever"}, "since: cannot parse"),
        ({"query": '{job="x"}', "interval": "-1s"}, "interval"),
        ({"query": '{job=~".*"}'}, "at least one regexp or equality matcher"),
        ({"query": '{job="x"}', "limit": "1000000"}, "max entries limit per query exceeded"),
    ],
)
async def test_query_range_errors(
    client: httpx.AsyncClient, params: dict[str, str], needle: str
) -> None:
    r = await client.get("/loki/api/v1/query_range", params=params)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert needle in r.text


async def test_query_range_interval(client: httpx.AsyncClient) -> None:
    t0 = await seed(client, 50)  # 100 ms apart
    data = await query_range(
        client,
        query='{job="seed"}',
        direction="forward",
        interval="1s",
        limit=1000,
        start=str(t0),
        end=str(t0 + 5 * NS),
    )
    assert [v[1] for v in values_of(data)] == [f"line {i}" for i in range(0, 50, 10)]
    data = await query_range(
        client, query='{job="seed"}', interval="0.5", limit=3, start=str(t0), end=str(t0 + 5 * NS)
    )
    got = [v[1] for s in data["result"] for v in s["values"]]
    assert got == ["line 49", "line 44", "line 39"]


async def test_metric_query_range_matrix(client: httpx.AsyncClient) -> None:
    t0 = await seed(client, 50)
    start = t0 // NS * NS
    data = await query_range(
        client,
        query='sum by (job) (count_over_time({job="seed"}[1s]))',
        start=str(start // NS),
        end=str(start // NS + 5),
        step="1s",
    )
    assert data["resultType"] == "matrix"
    (series,) = data["result"]
    assert series["metric"] == {"job": "seed"}
    for t, v in series["values"]:
        assert isinstance(t, int) and isinstance(v, str)
    assert sum(float(v) for _, v in series["values"]) == 50  # windows (t - 1s, t]
    assert "stats" in data and "summary" in data["stats"]


async def test_instant_query(client: httpx.AsyncClient) -> None:
    await seed(client, 20)
    r = await client.get(
        "/loki/api/v1/query", params={"query": 'sum(count_over_time({job="seed"}[1h]))'}
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["resultType"] == "vector"
    assert data["result"][0]["value"][1] == "20"
    assert isinstance(data["result"][0]["value"][0], int | float)
    r = await client.get("/loki/api/v1/query", params={"query": "2 * 3"})
    assert r.json()["data"]["resultType"] == "scalar"
    assert r.json()["data"]["result"][1] == "6"
    r = await client.get("/loki/api/v1/query", params={"query": '{job="seed"}'})
    assert r.status_code == 400
    assert "log queries are not supported as an instant query type" in r.text
    r = await client.get("/loki/api/v1/query", params={"query": "1", "limit": "0"})
    assert r.status_code == 400 and "limit must be a positive value" in r.text
    r = await client.post("/loki/api/v1/query", data={"query": "1 + 1", "time": "1714557600"})
    assert r.json()["data"]["result"] == [1714557600, "2"]


def test_number_formats() -> None:
    assert fmt_time(1714557600.0) == 1714557600
    assert fmt_time(1714557900.5) == 1714557900.5
    assert fmt_value(38.0) == "38"
    assert fmt_value(37.7) == "37.7"
    assert fmt_value(float("nan")) == "NaN"
    assert fmt_value(float("inf")) == "+Inf"
    assert fmt_value(1e21) == "1000000000000000000000"
    assert fmt_value(1.5e-7) == "0.00000015"


# ---------------------------------------------------------------------- metadata endpoints


async def test_labels_values_and_series(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    await push_json(
        client,
        v1({"job": "api", "env": "prod"}, [str(t0), "a"]),
        v1({"job": "db", "env": "dev"}, [str(t0), "b"]),
    )
    for path in ("/loki/api/v1/labels", "/loki/api/v1/label"):
        r = await client.get(path)
        assert r.json() == {"status": "success", "data": ["env", "job"]}
    r = await client.get("/loki/api/v1/label/job/values")
    assert r.json() == {"status": "success", "data": ["api", "db"]}
    r = await client.get("/loki/api/v1/label/job/values", params={"query": '{env="dev"}'})
    assert r.json()["data"] == ["db"]
    # data is omitted when empty
    r = await client.get("/loki/api/v1/label/nope/values")
    assert r.json() == {"status": "success"}
    r = await client.get("/loki/api/v1/labels", params={"start": "1", "end": "2"})
    assert r.json() == {"status": "success"}
    # series: match[] repeatable, `match` accepted, none means all, POST form
    r = await client.get(
        "/loki/api/v1/series", params=[("match[]", '{job="api"}'), ("match[]", '{env="dev"}')]
    )
    assert sorted(r.json()["data"], key=str) == sorted(
        [{"job": "api", "env": "prod"}, {"job": "db", "env": "dev"}], key=str
    )
    r = await client.get("/loki/api/v1/series", params={"match": '{job="db"}'})
    assert r.json()["data"] == [{"job": "db", "env": "dev"}]
    r = await client.get("/loki/api/v1/series")
    assert len(r.json()["data"]) == 2
    r = await client.post("/loki/api/v1/series", data={"match[]": '{job="api"}'})
    assert r.json()["data"] == [{"job": "api", "env": "prod"}]
    r = await client.get("/loki/api/v1/series", params={"match[]": '{job="nothing"}'})
    assert r.json() == {"status": "success", "data": []}
    r = await client.get("/loki/api/v1/series", params={"match[]": "{job="})
    assert r.status_code == 400 and "parse error" in r.text


async def test_tenants_kept_apart(client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    await push_json(client, v1({"job": "t"}, [str(t0), "for a"]), tenant="team-a")
    await push_json(client, v1({"job": "t"}, [str(t0), "for b"]), tenant="team-b")
    await push_json(client, v1({"job": "t"}, [str(t0), "default"]))
    for tenant, line in (("team-a", "for a"), ("team-b", "for b"), (None, "default")):
        headers = {"X-Scope-OrgID": tenant} if tenant else {}
        data = await query_range(client, query='{job="t"}', headers=headers)
        assert values_of(data) == [[str(t0), line]]
    r = await client.get("/loki/api/v1/labels", headers={"X-Scope-OrgID": "nobody"})
    assert r.json() == {"status": "success"}
    r = await client.get("/loki/api/v1/series", headers={"X-Scope-OrgID": "fake"})
    assert r.json()["data"] == [{"job": "t"}]
    for bad, needle in (
        ("a/b", "unsupported character '/'"),
        ("..", "'.' or '..'"),
        ("x" * 151, "too long"),
        ("a|b", "multiple org IDs"),
    ):
        r = await client.get("/loki/api/v1/labels", headers={"X-Scope-OrgID": bad})
        assert r.status_code == 400 and needle in r.text, bad


async def test_gzip_responses(client: httpx.AsyncClient) -> None:
    await seed(client, 100)
    r = await client.get(
        "/loki/api/v1/query_range",
        params={"query": '{job="seed"}'},
        headers={"Accept-Encoding": "gzip"},
    )
    assert r.headers["content-encoding"] == "gzip"
    assert len(r.json()["data"]["result"][0]["values"]) == 100
    r = await client.get(
        "/loki/api/v1/query_range",
        params={"query": '{job="seed"}'},
        headers={"Accept-Encoding": "identity"},
    )
    assert "content-encoding" not in r.headers


async def test_ready_buildinfo_stats_format(client: httpx.AsyncClient) -> None:
    r = await client.get("/ready")
    assert (r.status_code, r.text) == (200, "ready")
    r = await client.get("/loki/api/v1/status/buildinfo")
    info = r.json()
    assert set(info) == {"version", "revision", "branch", "buildUser", "buildDate", "goVersion"}
    assert info["version"].startswith("3.")
    t0 = base_ts()
    await push_json(client, v1({"job": "st"}, [str(t0), "12345"], [str(t0 + 1), "123"]))
    r = await client.get("/loki/api/v1/index/stats", params={"query": '{job="st"} |= "1"'})
    assert r.json() == {"streams": 1, "chunks": 1, "entries": 2, "bytes": 8}
    r = await client.get(
        "/loki/api/v1/format_query", params={"query": 'sum by(a)(rate({a="b"}|="x"[5m]))'}
    )
    assert r.json() == {"status": "success", "data": 'sum by (a) (rate({a="b"} |= "x" [5m]))'}
    r = await client.get("/loki/api/v1/format_query", params={"query": "sum("})
    assert r.status_code == 400 and r.json()["status"] == "invalid-query"
    r = await client.get("/openapi.json")
    assert "/loki/api/v1/push" in r.json()["paths"]


@pytest.mark.parametrize(
    "query",
    [
        '{a="b", c=~"d.+", e!="f", g!~"h"} |= "x" != "y" |~ "z" !~ "w"',
        '{a="b"} | json x="y.z", b | logfmt --strict c | line_format "{{.a}}"',
        '{a="b"} | label_format d=e, f="{{.g}}" | drop h, i="j" | keep k',
        '{a="b"} | l > 10ms or m="n" and o <= 2KB',
        'topk(3, sum by (a) (rate({a="b"} [5m]))) * 2 + 1',
        'sum without (c) (count_over_time({a="b"} [1h])) / (2 - 1)',
    ],
)
def test_format_query_round_trips(query: str) -> None:
    expr = parse(query).expr
    assert parse(format_logql(expr)).expr == expr


# ---------------------------------------------------------------------- tail


def tail_url(server: RunningServer, **params: Any) -> str:
    from urllib.parse import urlencode

    return f"{server.ws_url}/loki/api/v1/tail?{urlencode(params)}"


async def recv_json(ws: Any) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(msg, str)  # text frames
    frame: dict[str, Any] = orjson.loads(msg)
    return frame


async def recv_entries(ws: Any, n: int) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    got: list[list[Any]] = []
    frames = []
    while len(got) < n:
        frame = await recv_json(ws)
        frames.append(frame)
        got.extend(v for s in frame["streams"] for v in s["values"])
    return got, frames


async def test_tail_backfill_then_live(server: RunningServer, client: httpx.AsyncClient) -> None:
    t0 = base_ts()
    old = [[str(t0 + i), f"old {i}"] for i in range(250)]
    await push_json(client, v1({"job": "tail"}, *old), v1({"job": "other"}, [str(t0), "no"]))
    url = tail_url(server, query='{job="tail"}', limit=250, start=str(t0 - NS))
    async with websockets.connect(url, additional_headers={"X-Scope-OrgID": "fake"}) as ws:
        got, frames = await recv_entries(ws, 250)
        assert [len(f["streams"][0]["values"]) for f in frames] == [100, 100, 50]
        assert got == old  # oldest first
        assert frames[0]["streams"][0]["stream"] == {"job": "tail"}
        assert "dropped_entries" not in frames[0]
        live = [[str(time.time_ns() + i), f"live {i}", {"run_id": "r9"}] for i in range(3)]
        await push_json(client, v1({"job": "tail"}, *live))
        got, frames = await recv_entries(ws, 3)
        assert [v[1] for v in got] == ["live 0", "live 1", "live 2"]
        assert frames[0]["streams"][0]["stream"] == {"job": "tail", "run_id": "r9"}


async def test_tail_categorize_labels(server: RunningServer, client: httpx.AsyncClient) -> None:
    url = tail_url(server, query='{job="cat"} | json')
    async with websockets.connect(url, additional_headers=CATEGORIZE) as ws:
        await asyncio.sleep(0.2)
        ts = str(time.time_ns())
        await push_json(client, v1({"job": "cat"}, [ts, '{"lvl":"warn"}', {"run_id": "r1"}]))
        frame = await recv_json(ws)
        assert frame["encodingFlags"] == ["categorize-labels"]
        assert frame["streams"] == [
            {
                "stream": {"job": "cat"},
                "values": [
                    [
                        ts,
                        '{"lvl":"warn"}',
                        {"structuredMetadata": {"run_id": "r1"}, "parsed": {"lvl": "warn"}},
                    ]
                ],
            }
        ]


async def test_tail_tenants_and_filters(server: RunningServer, client: httpx.AsyncClient) -> None:
    url = tail_url(server, query='{job="tt"} |= "keep"')
    async with websockets.connect(url, additional_headers={"X-Scope-OrgID": "t1"}) as ws:
        await asyncio.sleep(0.2)
        now = time.time_ns()
        await push_json(client, v1({"job": "tt"}, [str(now), "keep other tenant"]), tenant="t2")
        await push_json(client, v1({"job": "tt"}, [str(now + 1), "drop me"]), tenant="t1")
        await push_json(client, v1({"job": "tt"}, [str(now + 2), "keep mine"]), tenant="t1")
        got, _ = await recv_entries(ws, 1)
        assert got == [[str(now + 2), "keep mine"]]


async def test_tail_dropped_entries(tmp_path: Path) -> None:
    backend = await backend_at(tmp_path, {"embedded.tail_buffer": 50})
    try:
        async with (
            run_server(create_app(backend)) as srv,
            httpx.AsyncClient(base_url=srv.url) as client,
            websockets.connect(tail_url(srv, query='{job="burst"}')) as ws,
        ):
            await asyncio.sleep(0.2)
            t0 = time.time_ns()
            values = [[str(t0 + i), f"burst {i}"] for i in range(500)]
            assert (await push_json(client, v1({"job": "burst"}, *values))).status_code == 204
            got, frames = await recv_entries(ws, 50)
            dropped = frames[0]["dropped_entries"]
            assert len(dropped) == 450
            assert dropped[0] == {"labels": {"job": "burst"}, "timestamp": str(t0)}
            assert dropped[-1]["timestamp"] == str(t0 + 449)
            assert [v[1] for v in got] == [f"burst {i}" for i in range(450, 500)]
            assert all("dropped_entries" not in f for f in frames[1:])
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"query": '{job="x"}', "delay_for": "6"}, "delay_for can't be greater than 5"),
        ({"query": '{job="x"}', "delay_for": "soon"}, "delay_for"),
        ({"query": '{job="x"', "delay_for": "1"}, "parse error at line 1"),
        ({"query": 'rate({job="x"}[1m])'}, "tail needs a log query"),
        ({"query": '{job="x"}', "limit": "0"}, "limit must be a positive value"),
    ],
)
async def test_tail_bad_parameters_get_400_before_upgrade(
    server: RunningServer, params: dict[str, str], needle: str
) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(tail_url(server, **params)):
            pass
    resp = info.value.response
    assert resp.status_code == 400
    assert needle in resp.body.decode()


async def test_tail_delay_for_holds_frames(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    async with websockets.connect(tail_url(server, query='{job="late"}', delay_for="1")) as ws:
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await push_json(client, v1({"job": "late"}, [str(time.time_ns()), "held"]))
        got, _ = await recv_entries(ws, 1)
        assert got[0][1] == "held"
        assert time.monotonic() - t0 >= 0.9


async def test_tail_max_concurrent(backend: Backend) -> None:
    from backend.http.app import TailLimits

    app = create_app(backend, tail_limits=TailLimits(max_per_tenant=1))
    async with run_server(app) as srv:
        url = tail_url(srv, query='{job="x"}')
        async with websockets.connect(url), websockets.connect(url) as second:
            with pytest.raises(websockets.ConnectionClosedError) as info:
                await asyncio.wait_for(second.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            assert "max concurrent tail requests limit exceeded" in info.value.rcvd.reason


async def test_tail_pings_every_second(server: RunningServer) -> None:
    """Read raw frames after a hand-made upgrade: a ping (opcode 9) arrives within ~1 s."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /loki/api/v1/tail?query=%7Bjob%3D%22p%22%7D HTTP/1.1\r\n"
            f"Host: {server.host}:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    t0 = time.monotonic()
    opcodes = []
    while time.monotonic() - t0 < 3 and 9 not in opcodes:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), 3)
        size = b1 & 0x7F
        if size == 126:
            size = int.from_bytes(await reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(size)
        opcodes.append(b0 & 0x0F)
    assert 9 in opcodes
    assert time.monotonic() - t0 < 2.5
    writer.close()


# ---------------------------------------------------------------------- serve()


def test_loopback_rule() -> None:
    settings = load_config(None, env={}).settings
    for host in ("127.0.0.1", "::1", "localhost", "127.1.2.3"):
        assert is_loopback(host)
        check_bind(host, settings)
    assert not is_loopback("0.0.0.0")
    with pytest.raises(UsageError, match=r"refusing to listen on '0\.0\.0\.0'"):
        check_bind("0.0.0.0", settings)
    weak = load_config(None, env={"JWT_SECRET": "changeme"}).settings
    with pytest.raises(UsageError, match="jwt_secret"):
        check_bind("0.0.0.0", weak)
    strong = load_config(None, env={"JWT_SECRET": "k3Jx9-" + "aZ8q" * 8}).settings
    check_bind("0.0.0.0", strong)


async def test_serve_refuses_public_host_and_stops_on_sigterm(tmp_path: Path) -> None:
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    with pytest.raises(UsageError, match="refusing"):
        await serve(settings, host="0.0.0.0", port=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task = asyncio.create_task(serve(settings, host="127.0.0.1", port=port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(200):
            try:
                if (await client.get("/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        else:
            pytest.fail("serve() did not come up")
        t0 = base_ts()
        r = await push_json(client, v1({"job": "served"}, [str(t0), "hello"]))
        assert r.status_code == 204
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # ours is installed
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(task, 15)  # returns normally: nothing re-raised
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    # the backend was closed and the line is durable
    again = await backend_at(tmp_path)
    try:
        res = await again.query('{job="served"}', t0 - NS, t0 + NS)
        assert [e.line for s in res.streams for e in s.entries] == ["hello"]  # type: ignore[union-attr]
    finally:
        await again.close()


def test_cli_and_facade_do_not_import_the_web_stack() -> None:
    code = (
        "import sys, backend.facade, backend.cli.main, backend.http, backend.http.push_decode; "
        "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
