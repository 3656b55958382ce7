"""Turning raw log lines (a file, stdin, an HTTP body) into push-ready streams.

Used by `agentlog ingest` and reusable by the HTTP port. Each line is looked at on its own: a JSON
object, logfmt (mostly `key=value` tokens) or plain text, as `backend.events.parse_line_fields`
decides. Bytes are decoded as UTF-8 with undecodable bytes kept as visible `\\xNN` escapes, so
binary junk never stops an ingest.

Decisions (the brief and DESIGN.md are silent on the details):

- Timestamp: the first of the fields `ts`, `time`, `timestamp`, `@timestamp` that parses. RFC3339
  (with `Z`, an offset, or none = UTC; any number of fraction digits, kept to the ns), or a Unix
  epoch number (or numeric string) whose unit is read from its magnitude: below 1e11 seconds,
  below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
- A line with no usable timestamp takes "now", except when its stream's previous line had an
  explicit timestamp: then it follows that line (previous + 1 ns). A stack-trace line or a plain
  message between JSON lines of an old file stays next to them instead of jumping to today.
- Per-stream order is the file's order: a timestamp equal to or lower than the stream's previous
  one becomes previous + 1 ns (within one call of `lines_to_streams`).
- Labels: the caller's base labels, plus the line's agent and level fields (names from
  `FieldNames`) as the labels of the same names. The run id is never a label (high cardinality): it
  goes to the entry's structured metadata. A line with no labels at all gets `service_name=ingest`.
- Empty and whitespace-only lines are skipped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import IO

from .events import DEFAULT_NAMES, FieldNames, parse_line_fields
from .models import Labels, LogEntry, Stream

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_SERVICE",
    "MAX_READ_LINE",
    "TIME_FIELDS",
    "IngestStats",
    "decode_line",
    "label_name",
    "lines_to_streams",
    "parse_timestamp",
    "read_lines",
]

TIME_FIELDS = ("ts", "time", "timestamp", "@timestamp")
DEFAULT_SERVICE = "ingest"
DEFAULT_BATCH = 1000
MAX_LABEL_VALUE = 2048  # Loki's max_label_value_length; longer values are not made labels
MAX_READ_LINE = 8 * 1024 * 1024  # bytes of one line kept in memory; the rest is dropped

_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|z|[+-]\d{2}:?\d{2}|UTC)?$"
)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_]")


@dataclass(slots=True)
class IngestStats:
    """What `lines_to_streams` has seen so far (filled in as batches are produced)."""

    lines: int = 0  # entries produced
    skipped: int = 0  # empty lines
    run_ids: set[str] = field(default_factory=set)
    oversized: int = 0  # lines cut by `read_lines`


def decode_line(raw: bytes | str) -> str:
    """One line as text without its line ending; bad UTF-8 becomes visible `\\xNN` escapes."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else raw
    return text.rstrip("\r\n")


def read_lines(
    stream: IO[bytes], *, max_bytes: int = MAX_READ_LINE, stats: IngestStats | None = None
) -> Iterator[bytes]:
    """Lines of a binary stream, splitting on `\\n` only. A line longer than `max_bytes` keeps its
    first `max_bytes` (the store truncates further and says so) and the rest is skipped, so a file
    without newlines never has to fit in memory."""
    while True:
        chunk = stream.readline(max_bytes)
        if not chunk:
            return
        if len(chunk) >= max_bytes and not chunk.endswith(b"\n"):
            if stats is not None:
                stats.oversized += 1
            while True:  # drain the rest of this line
                more = stream.readline(max_bytes)
                if not more or more.endswith(b"\n"):
                    break
        yield chunk


def _from_number(value: float | Decimal) -> int | None:
    """Epoch seconds/ms/us/ns (unit by magnitude) as ns. Decimal arithmetic keeps `1714557600.25`
    exact instead of rounding through a binary float."""
    number = value if isinstance(value, Decimal) else Decimal(repr(value))
    if not number.is_finite() or number <= 0:
        return None
    if number < Decimal("1e11"):
        ns = number * _NS
    elif number < Decimal("1e14"):
        ns = number * 1_000_000
    elif number < Decimal("1e17"):
        ns = number * 1_000
    else:
        ns = number
    if ns >= 2**63:
        return None
    return int(ns)


def _from_rfc3339(text: str) -> int | None:
    m = _RFC3339.match(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        base = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:
        return None
    if tz and tz not in ("Z", "z", "UTC"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        base -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    delta = base - _EPOCH
    ns = (delta.days * 86400 + delta.seconds) * _NS
    if frac:
        ns += int(frac[:9].ljust(9, "0"))
    return ns if ns > 0 else None


def parse_timestamp(value: object) -> int | None:
    """A timestamp field's value in Unix ns, or None when it is not one (see module doc)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_number(float(value)) if isinstance(value, float) else _from_int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _NUMBER.match(text):
            if text.isdigit():
                return _from_int(int(text))
            try:
                return _from_number(Decimal(text))
            except InvalidOperation:
                return None
        return _from_rfc3339(text)
    return None


def _from_int(value: int) -> int | None:
    """Integers are scaled exactly (no float rounding of ns timestamps)."""
    if value <= 0:
        return None
    if value < 10**11:
        ns = value * _NS
    elif value < 10**14:
        ns = value * 1_000_000
    elif value < 10**17:
        ns = value * 1_000
    else:
        ns = value
    return ns if ns < 2**63 else None


def label_name(name: str) -> str:
    """A field name made a valid Loki label name (`service.name` -> `service_name`)."""
    out = _LABEL_BAD.sub("_", name)
    if not out or not (out[0].isalpha() or out[0] == "_"):
        out = "_" + out
    return out


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return ""


def _line_timestamp(fields: dict[str, object] | None) -> int | None:
    if not fields:
        return None
    for key in TIME_FIELDS:
        if key in fields:
            ts = parse_timestamp(fields[key])
            if ts is not None:
                return ts
    return None


def lines_to_streams(
    lines: Iterable[bytes | str],
    base_labels: Labels | None = None,
    names: FieldNames = DEFAULT_NAMES,
    now_ns: Callable[[], int] | int | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    stats: IngestStats | None = None,
) -> Iterator[list[Stream]]:
    """Parse lines into batches of streams ready for `Backend.push`.

    Each yielded batch holds at most `batch_size` entries, grouped by label set, in input order
    within each stream. `now_ns` is the clock for lines without a timestamp: a callable (default
    `time.time_ns`, read per line) or a fixed value. `stats`, when given, is updated as lines are
    consumed (entries, skipped lines, distinct run ids).
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if now_ns is None:
        clock: Callable[[], int] = time.time_ns
    elif isinstance(now_ns, int):
        fixed = now_ns

        def clock() -> int:
            return fixed
    else:
        clock = now_ns
    st = stats if stats is not None else IngestStats()
    base = dict(base_labels or {})
    agent_key, level_key = names.agent, names.level
    agent_label, level_label = label_name(agent_key), label_name(level_key)
    run_key = names.run_id
    # per stream: (last ts, whether that ts came from the line itself)
    last: dict[tuple[tuple[str, str], ...], tuple[int, bool]] = {}
    batch: dict[tuple[tuple[str, str], ...], Stream] = {}
    count = 0
    for raw in lines:
        line = decode_line(raw)
        if not line.strip():
            st.skipped += 1
            continue
        fields = parse_line_fields(line)
        labels = dict(base)
        metadata: Labels = {}
        if fields:
            agent = _scalar(fields.get(agent_key))
            if agent and len(agent) <= MAX_LABEL_VALUE and agent_label not in base:
                labels[agent_label] = agent
            level = _scalar(fields.get(level_key))
            if level and len(level) <= MAX_LABEL_VALUE and level_label not in base:
                labels[level_label] = level
            run_id = _scalar(fields.get(run_key))
            if run_id:
                metadata[run_key] = run_id
                st.run_ids.add(run_id)
        if not labels:
            labels = {"service_name": DEFAULT_SERVICE}
        key = tuple(sorted(labels.items()))
        explicit = _line_timestamp(fields)
        prev = last.get(key)
        if explicit is not None:
            ts, is_explicit = explicit, True
        elif prev is not None and prev[1]:
            ts, is_explicit = prev[0] + 1, True
        else:
            ts, is_explicit = clock(), False
        if prev is not None and ts <= prev[0]:
            ts = prev[0] + 1
        last[key] = (ts, is_explicit)
        stream = batch.get(key)
        if stream is None:
            stream = batch[key] = Stream(labels=labels)
        stream.entries.append(LogEntry(ts=ts, line=line, metadata=metadata))
        st.lines += 1
        count += 1
        if count >= batch_size:
            yield list(batch.values())
            batch = {}
            count = 0
    if batch:
        yield list(batch.values())
