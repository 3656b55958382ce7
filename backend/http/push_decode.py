"""Decoding Loki push bodies into `Stream`s: pure functions, no web framework.

Formats (reference section 3.1 and 4):

- JSON (`application/json`): `{"streams":[{"stream":{...},"values":[["<ns>","line",{meta}]]}]}`.
  The timestamp must be a JSON string of integer nanoseconds; a number is refused. Keys other than
  `stream`/`values` in a stream object (loki-logger-handler sends a few) are ignored. The legacy
  shape of `/api/prom/push` (`{"labels":"{a=\"b\"}","entries":[{"ts":"<RFC3339>","line":"..."}]}`,
  python-logging-loki's default) is read per stream object, on both endpoints.
- Protobuf (anything else): a `logproto.PushRequest` compressed with snappy in raw block format.
  The message classes are built at run time from a hand-written descriptor (no protoc, no
  generated code), in a private descriptor pool so they never clash with anyone else's. String
  fields are declared `bytes` (the same wire type) so one line of invalid UTF-8 does not fail the
  whole request, as it would not in Loki: undecodable bytes become visible `\\xNN` escapes.
- `Content-Encoding`: gzip (several members allowed) and deflate (zlib-wrapped or raw, both seen
  in the wild) are decoded; `snappy` is tolerated and does nothing (as in Loki); anything else is
  refused with 400.

Size guards: the decoded body of any encoding is capped (`PushLimits.max_decoded_bytes`), checked
while inflating and, for snappy, from the length header before decompressing, so a small
compressed bomb never gets to allocate its full size.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import cramjam
import orjson
from google.protobuf import (  # type: ignore[import-untyped, unused-ignore]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import (  # type: ignore[import-untyped, unused-ignore]
    DecodeError,
    Message,
)

from ..errors import QueryError
from ..logql.pipeline import unquote_go_string
from ..logql.timefmt import parse_time
from ..models import Labels, LogEntry, RejectedEntry, Stream

__all__ = [
    "Decoded",
    "PushBodyError",
    "PushLimits",
    "decode_body",
    "decode_content",
    "decode_json",
    "decode_protobuf",
    "parse_label_string",
    "push_request_class",
]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PushLimits:
    """Limits of the push endpoints (Loki's defaults where Loki has one)."""

    max_body_bytes: int = 100 * MiB  # as received (compressed); Loki: 413 over 100 MiB
    max_decoded_bytes: int = 128 * MiB  # after Content-Encoding and snappy: the bomb guard
    max_metadata_entries: int = 128  # structured metadata pairs per entry (Loki)
    max_metadata_bytes: int = 64 * 1024  # structured metadata bytes per entry (Loki)


@dataclass(slots=True)
class Decoded:
    """A decoded push: the streams to store, the entries refused while decoding (structured
    metadata over the limits) and how many entries the body held."""

    streams: list[Stream] = field(default_factory=list)
    rejected: list[RejectedEntry] = field(default_factory=list)
    total: int = 0


class PushBodyError(ValueError):
    """A push body that cannot be taken: `status` is 400 (bad body) or 413 (too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _too_large(limit: int) -> PushBodyError:
    return PushBodyError(
        f"request body too large: more than {limit} bytes once decompressed", status=413
    )


# ---------------------------------------------------------------- Content-Encoding


def _inflate(data: bytes, wbits: int, cap: int) -> bytes:
    """zlib/gzip/raw deflate with an output cap; gzip members are concatenated (as Go reads)."""
    out: list[bytes] = []
    total = 0
    rest = data
    while True:
        d = zlib.decompressobj(wbits)
        try:
            chunk = d.decompress(rest, cap + 1 - total)
        except zlib.error as exc:
            raise PushBodyError(f"cannot decompress the request body: {exc}") from None
        total += len(chunk)
        out.append(chunk)
        if total > cap or d.unconsumed_tail:
            raise _too_large(cap)
        if not d.eof:
            raise PushBodyError("cannot decompress the request body: unexpected end of data")
        rest = d.unused_data
        if wbits <= zlib.MAX_WBITS or not rest.strip(b"\x00"):
            break  # zlib and raw deflate hold one stream; zero padding after gzip is ignored
    return b"".join(out)


def _is_zlib(data: bytes) -> bool:
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0


def decode_content(body: bytes, encoding: str, limits: PushLimits) -> bytes:
    """Undo `Content-Encoding` (gzip, deflate; snappy and identity pass through)."""
    enc = encoding.strip().lower()
    if enc in ("", "identity", "snappy"):
        out = body
    elif enc in ("gzip", "x-gzip"):
        out = _inflate(body, 16 + zlib.MAX_WBITS, limits.max_decoded_bytes)
    elif enc == "deflate":
        wbits = zlib.MAX_WBITS if _is_zlib(body) else -zlib.MAX_WBITS
        out = _inflate(body, wbits, limits.max_decoded_bytes)
    else:
        raise PushBodyError(f"Content-Encoding {encoding!r} not supported")
    if len(out) > limits.max_decoded_bytes:
        raise _too_large(limits.max_decoded_bytes)
    return out


def _snappy_length(data: bytes) -> int:
    """The uncompressed length a raw snappy block announces (a varint at its head)."""
    result = shift = 0
    for i, byte in enumerate(data[:10]):
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result
        shift += 7
        if i == 9:
            break
    raise PushBodyError("snappy: corrupt input (bad length header)")


def snappy_decode(data: bytes, limits: PushLimits) -> bytes:
    if _snappy_length(data) > limits.max_decoded_bytes:
        raise _too_large(limits.max_decoded_bytes)
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except cramjam.DecompressionError as exc:
        raise PushBodyError(f"snappy: corrupt input: {exc}") from None


# ---------------------------------------------------------------- label strings

_LABEL_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\}\s*$)')


@functools.lru_cache(maxsize=4096)
def _parse_label_string(text: str) -> tuple[tuple[str, str], ...]:
    s = text.strip()
    if not s.startswith("{"):
        raise PushBodyError(f"invalid labels {text!r}: a label set starts with {{")
    pos = s.index("{") + 1
    pairs: dict[str, str] = {}
    if s[pos:].strip() == "}":
        return ()
    while True:
        m = _LABEL_PAIR.match(s, pos)
        if m is None:
            raise PushBodyError(
                f'invalid labels {text!r} at char {pos + 1}: expected name="value" pairs '
                'separated by commas, e.g. {job="api", env="prod"}'
            )
        try:
            value = unquote_go_string(m.group(2))
        except ValueError as exc:
            raise PushBodyError(f"invalid labels {text!r}: {exc.args[0]}") from None
        if m.group(1) in pairs:
            raise PushBodyError(f"invalid labels {text!r}: duplicate label name {m.group(1)!r}")
        pairs[m.group(1)] = value
        pos = m.end()
        if m.group(3) != ",":
            return tuple(pairs.items())
        if s[pos:].strip() == "}":  # a trailing comma, as Prometheus allows
            return tuple(pairs.items())


def parse_label_string(text: str) -> Labels:
    """`{job="api", env="prod"}` (Prometheus label text, Go-quoted values) as a dict."""
    return dict(_parse_label_string(text))


# ---------------------------------------------------------------- JSON


def _bad(msg: str) -> PushBodyError:
    return PushBodyError(f"invalid push request: {msg}")


def _str_map(obj: object, what: str) -> Labels:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be an object of strings, got {type(obj).__name__}")
    for k, v in obj.items():
        if not isinstance(v, str):
            raise _bad(f"{what}: the value of {k!r} must be a string, got {type(v).__name__}")
    return obj


def _ns(raw: str, where: str) -> int:
    # Loki reads it with strconv.ParseInt: digits, an optional sign, nothing else.
    text = raw.strip()
    body = text[1:] if text[:1] in "+-" else text
    if not body.isdigit() or not body.isascii() or len(body) > 19:
        raise _bad(f"{where}: the timestamp {raw!r} is not an integer number of nanoseconds")
    return int(text)


def _meta_problem(meta: Labels, limits: PushLimits) -> str:
    """Why structured metadata is over Loki's limits, or ""."""
    if len(meta) > limits.max_metadata_entries:
        return (
            f"too many structured metadata labels: '{len(meta)}', "
            f"limit: '{limits.max_metadata_entries}'"
        )
    size = sum(len(k) + len(v) for k, v in meta.items())
    if size > limits.max_metadata_bytes:
        return (
            f"structured metadata too large: '{size}' bytes, limit: '{limits.max_metadata_bytes}'"
        )
    return ""


def _v1_value(v: object, i: int, j: int) -> LogEntry:
    """One `[ts, line]` / `[ts, line, metadata]` value, fully checked."""
    if not isinstance(v, list) or not 2 <= len(v) <= 3:
        raise _bad(f"streams[{i}].values[{j}] must be [ts, line] or [ts, line, metadata]")
    ts, line = v[0], v[1]
    if not isinstance(ts, str):
        raise _bad(
            f"streams[{i}].values[{j}]: the timestamp must be a JSON string of Unix "
            f"nanoseconds, got {type(ts).__name__} {ts!r}"
        )
    if not isinstance(line, str):
        raise _bad(f"streams[{i}].values[{j}]: the line must be a string")
    meta = _str_map(v[2], f"streams[{i}].values[{j}][2]") if len(v) == 3 else {}
    if ts.isdigit() and len(ts) <= 19:
        return LogEntry(int(ts), line, meta)
    return LogEntry(_ns(ts, f"streams[{i}].values[{j}]"), line, meta)


def _v1_stream(obj: dict[str, Any], i: int, out: Decoded, limits: PushLimits) -> None:
    labels = _str_map(obj.get("stream"), f"streams[{i}].stream")
    values = obj.get("values")
    if values is None:
        values = []
    if not isinstance(values, list):
        raise _bad(f"streams[{i}].values must be an array")
    entries: list[LogEntry] = []
    append = entries.append
    for j, v in enumerate(values):
        # The common case first: ["<digits>", "line"], checked with exact types.
        if type(v) is list and len(v) == 2:
            ts, line = v
            if type(ts) is str and type(line) is str and ts.isdigit() and len(ts) <= 19:
                append(LogEntry(int(ts), line))
                continue
        entry = _v1_value(v, i, j)
        if entry.metadata and (why := _meta_problem(entry.metadata, limits)):
            out.rejected.append(RejectedEntry(labels, entry.ts, why))
            continue
        append(entry)
    out.total += len(values)
    out.streams.append(Stream(labels, entries))


def _legacy_stream(obj: dict[str, Any], i: int, out: Decoded) -> None:
    raw_labels = obj.get("labels")
    if not isinstance(raw_labels, str):
        raise _bad(f'streams[{i}].labels must be a label string like {{job="api"}}')
    labels = parse_label_string(raw_labels)
    items = obj.get("entries")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise _bad(f"streams[{i}].entries must be an array")
    entries: list[LogEntry] = []
    for j, e in enumerate(items):
        if not isinstance(e, dict):
            raise _bad(f"streams[{i}].entries[{j}] must be an object with ts and line")
        ts, line = e.get("ts", e.get("timestamp")), e.get("line")
        if not isinstance(ts, str):
            raise _bad(f"streams[{i}].entries[{j}].ts must be an RFC3339 string")
        if not isinstance(line, str):
            raise _bad(f"streams[{i}].entries[{j}].line must be a string")
        try:
            ns = parse_time(ts, 0)
        except QueryError as exc:
            raise _bad(f"streams[{i}].entries[{j}].ts: {exc}") from None
        entries.append(LogEntry(ns, line))
    out.total += len(entries)
    out.streams.append(Stream(labels, entries))


def decode_json(body: bytes, limits: PushLimits | None = None) -> Decoded:
    """A JSON push body (v1 shape, or the legacy shape per stream object)."""
    out = Decoded()
    if not body.strip():
        return out
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("the body must be a JSON object with a streams array")
    streams = doc.get("streams")
    if streams is None:
        return out
    if not isinstance(streams, list):
        raise _bad("streams must be an array")
    lim = limits or PushLimits()
    for i, obj in enumerate(streams):
        if not isinstance(obj, dict):
            raise _bad(f"streams[{i}] must be an object")
        if "stream" not in obj and "values" not in obj and ("labels" in obj or "entries" in obj):
            _legacy_stream(obj, i, out)
        else:
            _v1_stream(obj, i, out, lim)
    return out


# ---------------------------------------------------------------- protobuf

_PROTO_FILE = "agentlog/logproto/push.proto"


def _descriptor() -> descriptor_pb2.FileDescriptorProto:
    """`pkg/push/push.proto` (package logproto), field numbers as Loki's; see reference §4."""
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name=_PROTO_FILE,
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label, json_name=fname)
            if type_name:
                f.type_name = type_name

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg, raw = F.TYPE_MESSAGE, F.TYPE_BYTES
    message(
        "PushRequest",
        ("streams", 1, msg, many, ".logproto.StreamAdapter"),
        ("format", 2, raw, one, ""),
    )
    message("PushResponse")
    message(
        "StreamAdapter",
        ("labels", 1, raw, one, ""),
        ("entries", 2, msg, many, ".logproto.EntryAdapter"),
        ("hash", 3, F.TYPE_UINT64, one, ""),
    )
    message(
        "EntryAdapter",
        ("timestamp", 1, msg, one, ".google.protobuf.Timestamp"),
        ("line", 2, raw, one, ""),
        ("structuredMetadata", 3, msg, many, ".logproto.LabelPairAdapter"),
        ("parsed", 4, msg, many, ".logproto.LabelPairAdapter"),
    )
    message("LabelPairAdapter", ("name", 1, raw, one, ""), ("value", 2, raw, one, ""))
    return fdp


@functools.cache
def push_request_class() -> type[Message]:
    """`logproto.PushRequest`, built at run time in a private descriptor pool."""
    pool = descriptor_pool.DescriptorPool()
    ts_file = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts_file)
    pool.Add(ts_file)
    pool.Add(_descriptor())
    cls: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("logproto.PushRequest")
    )
    return cls


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def decode_protobuf(body: bytes, limits: PushLimits) -> Decoded:
    """A snappy (raw block) compressed `PushRequest`."""
    out = Decoded()
    if not body:
        return out
    data = snappy_decode(body, limits)
    req: Any = push_request_class()()
    try:
        req.ParseFromString(data)
    except DecodeError as exc:
        raise _bad(f"cannot decode the protobuf PushRequest: {exc}") from None
    for s in req.streams:
        labels = parse_label_string(_text(s.labels))
        entries: list[LogEntry] = []
        append = entries.append
        for e in s.entries:
            ts = e.timestamp
            ns = ts.seconds * 1_000_000_000 + ts.nanos
            if not e.structuredMetadata:
                append(LogEntry(ns, _text(e.line)))
                continue
            meta = {_text(p.name): _text(p.value) for p in e.structuredMetadata}
            if why := _meta_problem(meta, limits):
                out.rejected.append(RejectedEntry(labels, ns, why))
                continue
            append(LogEntry(ns, _text(e.line), meta))
        out.total += len(s.entries)
        out.streams.append(Stream(labels, entries))
    return out


# ---------------------------------------------------------------- the whole body


def decode_body(
    body: bytes, content_type: str, content_encoding: str, limits: PushLimits
) -> Decoded:
    """A push body as received: Content-Encoding first, then JSON or snappy protobuf."""
    data = decode_content(body, content_encoding, limits)
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        return decode_json(data, limits)
    return decode_protobuf(data, limits)
