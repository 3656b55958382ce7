"""OTLP/HTTP log ingestion: `POST /v1/logs` and `POST /otlp/v1/logs` (Loki's OTLP path, so an
exporter pointed at a Loki base URL works too).

Bodies: `application/x-protobuf` (an `ExportLogsServiceRequest`) or `application/json` (the
OTLP/JSON mapping: camelCase or snake_case keys, `traceId`/`spanId` as hex, 64-bit integers as
strings or numbers), with `Content-Encoding: gzip` (or deflate) or none; decompressed sizes are
capped (`PushLimits.max_decoded_bytes`: the decompression-bomb guard). The answer is an
`ExportLogsServiceResponse` in the request's format, with `partial_success` when some records
were refused; errors are a `google.rpc.Status` (400 bad body, 413 too large, 415 other content
types), and 429/503 carry `Retry-After` so exporters back off. Pushing needs the operator role.

Mapping, as Loki's OTLP ingestion does it, plus what the data contract needs (DESIGN.md):

- Resource attributes in Loki's default index-label list (`service.name`, `service.namespace`,
  `service.instance.id`, `deployment.environment`, `cloud.region`, `k8s.*.name`, ...) become
  stream labels with dots as underscores (`service.name` -> `service_name`; without one,
  `service_name="unknown_service"`). Other resource attributes (`process.pid`,
  `telemetry.sdk.*`, ...) would multiply streams, so they go to each entry's structured metadata,
  as in Loki.
- Two more labels the data contract reads: the agent (`fields.agent`, default `agent`) from the
  resource's `gen_ai.agent.name`, `agent.name` or `agent`, else `service.name`; and the level
  (`fields.level`) from `severity_text`, else from `severity_number` (trace, debug, info, warn,
  error, fatal).
- Log record attributes, the scope's name and version, `severity_text`, `severity_number`,
  `trace_id` and `span_id` (hex) and `event_name` go to structured metadata, names with dots as
  underscores. A run is found by its `run_id` attribute, else by its trace id (the data contract
  accepts `trace_id` as the run id).
- The line is the body (a string as is; a map or list as JSON). When the record carries fields of
  the data contract as attributes (`event`, `run_id`, `gen_ai.request.model`,
  `gen_ai.usage.input_tokens`, `exception.type`, `status`, ...) or has a map body or an event
  name, the line becomes a JSON object instead, so the task table understands it: the body's
  fields (or `{"msg": body}`), then those attributes under their own names, plus `event` derived
  from the event name or `gen_ai.operation.name` (`chat`, `text_completion`,
  `generate_content` -> `llm.call`; `execute_tool` -> `tool.call`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ..errors import AgentlogError, ServiceUnavailable
from ..events import FieldNames
from ..ingest import MAX_LABEL_VALUE, label_name
from ..models import Labels, LogEntry, RejectedEntry, Stream
from .app import context_of
from .auth import Identity, Role, require
from .push_decode import PushBodyError, PushLimits, _meta_problem, decode_content

__all__ = ["OtlpDecoded", "decode_otlp", "router"]

PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPE = "application/json"
DECODE_IN_THREAD_BYTES = 512 * 1024
MAX_DEPTH = 16  # nesting of AnyValue kept; deeper parts are cut with a marker

# Loki's `default_resource_attributes_as_index_labels`.
INDEX_LABEL_ATTRIBUTES = frozenset(
    {
        "service.name",
        "service.namespace",
        "service.instance.id",
        "deployment.environment",
        "deployment.environment.name",
        "cloud.region",
        "cloud.availability_zone",
        "k8s.cluster.name",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name",
        "container.name",
        "k8s.replicaset.name",
        "k8s.deployment.name",
        "k8s.statefulset.name",
        "k8s.daemonset.name",
        "k8s.cronjob.name",
        "k8s.job.name",
    }
)
AGENT_ATTRIBUTES = ("gen_ai.agent.name", "agent.name", "agent")
CONTRACT_EVENTS = frozenset({"run.start", "run.end", "step", "tool.call", "llm.call", "error"})
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})
_SYNONYMS = frozenset(
    {
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.prompt_tokens",
        "gen_ai.usage.completion_tokens",
        "gen_ai.usage.cost",
        "gen_ai.operation.name",
        "gen_ai.tool.name",
        "gen_ai.agent.name",
        "exception.type",
        "exception.message",
        "exception.stacktrace",
        "error.kind",
        "tool.name",
        "task.name",
        "task_name",
        "run.id",
        "event.name",
    }
)
_SEVERITY = ((21, "fatal"), (17, "error"), (13, "warn"), (9, "info"), (5, "debug"), (1, "trace"))


@dataclass(slots=True)
class OtlpDecoded:
    streams: list[Stream] = field(default_factory=list)
    rejected: list[RejectedEntry] = field(default_factory=list)
    total: int = 0


def _contract_keys(names: FieldNames) -> frozenset[str]:
    own = {
        names.run_id,
        names.agent,
        names.event,
        names.level,
        names.status,
        names.model,
        names.input_tokens,
        names.output_tokens,
        names.cost_usd,
        names.task,
        names.error_type,
        names.error_message,
        names.tool,
        names.step,
    }
    return frozenset(own | _SYNONYMS)


# ---------------------------------------------------------------- AnyValue


def _value(v: AnyValue, depth: int = 0) -> object:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if depth >= MAX_DEPTH:
        return "[nested too deep]"
    if kind == "array_value":
        return [_value(x, depth + 1) for x in v.array_value.values]
    return {kv.key: _value(kv.value, depth + 1) for kv in v.kvlist_value.values}


def _text(value: object) -> str:
    """An attribute value as a label or metadata string (Loki writes lists and maps as JSON)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e15 else str(int(value))
    if isinstance(value, int):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _attrs(kvs: Iterable[KeyValue]) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _level(severity_text: str, severity_number: int) -> str:
    text = severity_text.strip().lower()
    if text:
        return text[:20]
    for floor, name in _SEVERITY:
        if severity_number >= floor:
            return name
    return ""


def _event(attrs: dict[str, object], event_name: str) -> str | None:
    name = event_name or _text(attrs.get("event.name"))
    if name in CONTRACT_EVENTS:
        return name
    op = _text(attrs.get("gen_ai.operation.name"))
    if op in LLM_OPERATIONS or name == "gen_ai.client.inference.operation.details":
        return "llm.call"
    if op == "execute_tool":
        return "tool.call"
    return None


def _json_object(text: str) -> dict[str, Any] | None:
    s = text.lstrip()
    if not s.startswith("{"):
        return None
    try:
        obj = orjson.loads(s)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _line(
    body: object, attrs: dict[str, object], event_name: str, names: FieldNames, keys: frozenset[str]
) -> str:
    """The entry's line (see module doc)."""
    contract = {k: v for k, v in attrs.items() if k in keys}
    event = _event(attrs, event_name)
    if not contract and event is None and not isinstance(body, dict):
        return "" if body is None else _text(body)
    obj: dict[str, Any]
    if isinstance(body, dict):
        obj = dict(body)
    elif isinstance(body, str) and (parsed := _json_object(body)) is not None:
        obj = parsed
    elif body is None or body == "":
        obj = {}
    else:
        obj = {"msg": body}
    for k, v in contract.items():
        obj.setdefault(k, v)
    if names.run_id not in obj and "run.id" in attrs:
        obj[names.run_id] = attrs["run.id"]
    if event is not None:
        obj.setdefault(names.event, event)
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


def _label_value(value: object) -> str | None:
    text = _text(value)
    return text if text and len(text) <= MAX_LABEL_VALUE else None


# ---------------------------------------------------------------- decoding


def _from_json(data: bytes) -> ExportLogsServiceRequest:
    try:
        doc = orjson.loads(data) if data.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise PushBodyError(f"invalid OTLP/JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PushBodyError("invalid OTLP/JSON: the body must be an object with resourceLogs")
    try:
        for rl in doc.get("resourceLogs", doc.get("resource_logs")) or []:
            for sl in rl.get("scopeLogs", rl.get("scope_logs")) or []:
                for lr in sl.get("logRecords", sl.get("log_records")) or []:
                    for k in ("traceId", "spanId", "trace_id", "span_id"):
                        if isinstance(lr.get(k), str):  # OTLP/JSON: hex, protobuf JSON: base64
                            lr[k] = base64.b64encode(bytes.fromhex(lr[k])).decode()
        msg = ExportLogsServiceRequest()
        json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise PushBodyError(f"invalid OTLP/JSON logs request: {str(exc)[:300]}") from None
    return msg


def _from_protobuf(data: bytes) -> ExportLogsServiceRequest:
    msg = ExportLogsServiceRequest()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise PushBodyError(f"invalid OTLP protobuf logs request: {exc}") from None
    return msg


def decode_otlp(
    body: bytes,
    content_type: str,
    content_encoding: str,
    limits: PushLimits,
    names: FieldNames | None = None,
    *,
    now_ns: int | None = None,
) -> OtlpDecoded:
    """An OTLP logs request as received, mapped to streams (see module doc). Raises
    PushBodyError (status 400, 413 or 415) for a body that cannot be taken."""
    names = names or FieldNames()
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in PROTOBUF_TYPES and media != JSON_TYPE:
        raise PushBodyError(
            f"unsupported Content-Type {content_type[:100]!r}: send application/x-protobuf or "
            "application/json",
            status=415,
        )
    data = decode_content(body, content_encoding, limits)
    req = _from_json(data) if media == JSON_TYPE else _from_protobuf(data)
    keys = _contract_keys(names)
    now = time.time_ns() if now_ns is None else now_ns
    out = OtlpDecoded()
    streams: dict[tuple[tuple[str, str], ...], Stream] = {}
    for rl in req.resource_logs:
        res_attrs = _attrs(rl.resource.attributes)
        base: Labels = {}
        res_meta: Labels = {}
        for k, v in res_attrs.items():
            text = _label_value(v) if k in INDEX_LABEL_ATTRIBUTES else None
            if text is not None:
                base[label_name(k)] = text
            elif (t := _text(v)) != "":
                res_meta[label_name(k)] = t
        base.setdefault("service_name", "unknown_service")
        agent = next((a for k in AGENT_ATTRIBUTES if (a := _label_value(res_attrs.get(k)))), None)
        if names.agent not in base:
            base[names.agent] = agent or base["service_name"]
        for sl in rl.scope_logs:
            scope_meta = dict(res_meta)
            if sl.scope.name:
                scope_meta["scope_name"] = sl.scope.name
            if sl.scope.version:
                scope_meta["scope_version"] = sl.scope.version
            for k, v in _attrs(sl.scope.attributes).items():
                scope_meta[label_name(k)] = _text(v)
            for lr in sl.log_records:
                out.total += 1
                attrs = _attrs(lr.attributes)
                labels = dict(base)
                level = _level(lr.severity_text, lr.severity_number)
                if level and names.level not in labels:
                    labels[names.level] = level
                meta = dict(scope_meta)
                for k, v in attrs.items():
                    meta[label_name(k)] = _text(v)
                if lr.severity_text:
                    meta["severity_text"] = lr.severity_text
                if lr.severity_number:
                    meta["severity_number"] = str(lr.severity_number)
                if lr.trace_id:
                    meta["trace_id"] = lr.trace_id.hex()
                if lr.span_id:
                    meta["span_id"] = lr.span_id.hex()
                if lr.event_name:
                    meta["event_name"] = lr.event_name
                ts = lr.time_unix_nano or lr.observed_time_unix_nano or now
                content = _value(lr.body) if lr.HasField("body") else None
                line = _line(content, attrs, lr.event_name, names, keys)
                if why := _meta_problem(meta, limits):
                    out.rejected.append(RejectedEntry(labels, ts, why))
                    continue
                key = tuple(sorted(labels.items()))
                stream = streams.get(key)
                if stream is None:
                    stream = streams[key] = Stream(labels, [])
                stream.entries.append(LogEntry(ts, line, meta))
    out.streams = list(streams.values())
    return out


# ---------------------------------------------------------------- responses


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def status_body(code: int, message: str, as_json: bool) -> tuple[bytes, str]:
    """A `google.rpc.Status` (code, message) in the request's format."""
    if as_json:
        return orjson.dumps({"code": code, "message": message}), JSON_TYPE
    msg = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(msg)) + msg, "application/x-protobuf"


_GRPC_CODE = {400: 3, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}  # INVALID_ARGUMENT, ...


def _wants_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == JSON_TYPE


def _error(request: Request, status: int, message: str) -> Response:
    body, media = status_body(_GRPC_CODE.get(status, 2), message, _wants_json(request))
    headers = {"Retry-After": "5"} if status in (429, 503) else None
    return Response(body, status, headers=headers, media_type=media)


class OtlpRoute(APIRoute):
    """Errors as OTLP/HTTP wants them: a Status in the request's format."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except PushBodyError as exc:
                return _error(request, exc.status, str(exc))
            except ServiceUnavailable as exc:
                return _error(request, 503, str(exc))
            except AgentlogError as exc:
                request.scope.setdefault("state", {})["error"] = f"{type(exc).__name__}: {exc}"
                return _error(request, 500, str(exc))

        return route


router = APIRouter(route_class=OtlpRoute, tags=["otlp"])

_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}},
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "ExportLogsServiceResponse (partial_success when records were refused)",
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object"}},
        },
    },
    400: {"description": "Invalid body (a google.rpc.Status)"},
    401: {"description": "No or invalid credentials"},
    403: {"description": "The role is too low"},
    413: {"description": "Body too large (also once decompressed)"},
    415: {"description": "Unsupported Content-Type"},
    429: {"description": "Rate limit exceeded (Retry-After)"},
}


async def _export(request: Request, ident: Identity) -> Response:
    ctx = context_of(request)
    body = await request.body()
    ctype = request.headers.get("content-type", "")
    enc = request.headers.get("content-encoding", "")
    ctx.metrics.ingest_bytes.labels("otlp").inc(len(body))
    names = ctx.backend.fields
    if len(body) > DECODE_IN_THREAD_BYTES:
        decoded = await asyncio.to_thread(decode_otlp, body, ctype, enc, ctx.push, names)
    else:
        decoded = decode_otlp(body, ctype, enc, ctx.push, names)
    rejected = list(decoded.rejected)
    if any(s.entries for s in decoded.streams):
        result = await ctx.backend.push(decoded.streams, ident.tenant)
        rejected.extend(result.rejected)
    accepted = decoded.total - len(rejected)
    ctx.metrics.ingest_entries.labels("otlp", "accepted").inc(max(0, accepted))
    if rejected:
        ctx.metrics.ingest_entries.labels("otlp", "rejected").inc(len(rejected))
    resp = ExportLogsServiceResponse()
    if rejected:
        resp.partial_success.rejected_log_records = len(rejected)
        reasons = sorted({r.reason for r in rejected})
        resp.partial_success.error_message = "; ".join(reasons)[:1000]
    if _wants_json(request):
        doc = json_format.MessageToDict(resp)
        return Response(orjson.dumps(doc), media_type=JSON_TYPE)
    return Response(resp.SerializeToString(), media_type="application/x-protobuf")


Pusher = Annotated[Identity, require(Role.OPERATOR, "push")]


@router.post("/v1/logs", summary="OTLP/HTTP logs", openapi_extra=_DOC, responses=_RESPONSES)
async def export_logs(request: Request, ident: Pusher) -> Response:
    """An OTLP `ExportLogsServiceRequest` (protobuf or JSON, gzip or not)."""
    return await _export(request, ident)


@router.post(
    "/otlp/v1/logs",
    summary="OTLP/HTTP logs (Loki's path)",
    openapi_extra=_DOC,
    responses=_RESPONSES,
)
async def export_logs_loki_path(request: Request, ident: Pusher) -> Response:
    """The same as /v1/logs, at the path Loki serves OTLP on."""
    return await _export(request, ident)
