"""backend.ingest: lines (bytes or text) -> push-ready streams."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from backend.events import FieldNames
from backend.ingest import (
    IngestStats,
    decode_line,
    label_name,
    lines_to_streams,
    parse_timestamp,
    read_lines,
)
from backend.models import Stream

NOW = 1_790_000_000_000_000_000  # a fixed "now" (2026)
T0 = 1_714_557_600_000_000_000  # 2024-05-01T10:00:00Z


Row = tuple[dict[str, str], int, str, dict[str, str]]


def flat(batches: Iterator[list[Stream]]) -> list[Row]:
    """(labels, ts, line, metadata) of every entry, in input order per stream."""
    out: list[Row] = []
    for batch in batches:
        for s in batch:
            out.extend((s.labels, e.ts, e.line, e.metadata) for e in s.entries)
    return out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T10:00:00Z", T0),
        ("2024-05-01T10:00:00.123456789Z", T0 + 123_456_789),
        ("2024-05-01T12:00:00+02:00", T0),
        ("2024-05-01T10:00:00.5", T0 + 500_000_000),  # no zone: UTC
        ("2024-05-01 10:00:00,25Z", T0 + 250_000_000),
        ("2024-05-01T10:00:00.1234567891Z", T0 + 123_456_789),  # extra digits cut at ns
        (1714557600, T0),  # seconds
        (1714557600.25, T0 + 250_000_000),
        (1714557600123, T0 + 123_000_000),  # ms
        (1714557600123456, T0 + 123_456_000),  # us
        (1714557600123456789, T0 + 123_456_789),  # ns, exact (no float rounding)
        ("1714557600123456789", T0 + 123_456_789),
        ("1714557600", T0),
        ("1714557600.5", T0 + 500_000_000),
        ("not a time", None),
        ("2024-13-01T10:00:00Z", None),
        ("", None),
        (0, None),
        (-5, None),
        (True, None),
        (None, None),
        ([1], None),
        (float("nan"), None),
        (10**30, None),
    ],
)
def test_parse_timestamp(value: object, expected: int | None) -> None:
    assert parse_timestamp(value) == expected


def test_decode_line_keeps_bad_bytes_visible() -> None:
    assert decode_line(b"ok \xff\xfe end\r\n") == "ok \\xff\\xfe end"
    assert decode_line("caf\u00e9\n") == "caf\u00e9"
    assert decode_line(b"\xe2\x82") == "\\xe2\\x82"  # a truncated UTF-8 sequence


def test_label_name() -> None:
    assert label_name("service.name") == "service_name"
    assert label_name("9lives") == "_9lives"
    assert label_name("agent") == "agent"


def test_mixed_formats_labels_metadata_and_timestamps() -> None:
    lines: list[bytes | str] = [
        b'{"ts":"2024-05-01T10:00:00Z","agent":"coder","level":"error","run_id":"r1",'
        b'"event":"error","msg":"boom"}\n',
        b"time=1714557601 agent=coder level=info run_id=r2 msg=hello\n",
        b"just some plain text\n",
        b"\n",
        b"   \n",
        '{"timestamp": 1714557602000, "level": "warn"}',
    ]
    rows = flat(lines_to_streams(lines, {}, FieldNames(), now_ns=NOW))
    assert rows == [
        (
            {"agent": "coder", "level": "error"},
            T0,
            '{"ts":"2024-05-01T10:00:00Z","agent":"coder","level":"error","run_id":"r1",'
            '"event":"error","msg":"boom"}',
            {"run_id": "r1"},
        ),
        (
            {"agent": "coder", "level": "info"},
            T0 + 1_000_000_000,
            "time=1714557601 agent=coder level=info run_id=r2 msg=hello",
            {"run_id": "r2"},
        ),
        ({"service_name": "ingest"}, NOW, "just some plain text", {}),
        (
            {"level": "warn"},
            T0 + 2_000_000_000,
            '{"timestamp": 1714557602000, "level": "warn"}',
            {},
        ),
    ]


def test_run_id_is_never_a_label_and_base_labels_apply() -> None:
    rows = flat(
        lines_to_streams(
            ['{"run_id":"abc","agent":"a1","@timestamp":"2024-05-01T10:00:00Z"}', "plain"],
            {"job": "batch", "env": "prod"},
            FieldNames(),
            now_ns=NOW,
        )
    )
    assert [r[0] for r in rows] == [
        {"job": "batch", "env": "prod", "agent": "a1"},
        {"job": "batch", "env": "prod"},  # no default service_name: there are labels already
    ]
    assert all("run_id" not in r[0] for r in rows)
    assert rows[0][3] == {"run_id": "abc"}


def test_base_labels_win_over_line_fields() -> None:
    [row] = flat(lines_to_streams(['{"agent":"from-line"}'], {"agent": "cli"}, now_ns=NOW))
    assert row[0] == {"agent": "cli"}


def test_configured_field_names() -> None:
    names = FieldNames(run_id="request_id", agent="service.name", level="severity")
    [row] = flat(
        lines_to_streams(
            ['{"request_id":"q1","run_id":"ignored","service.name":"svc","severity":"ERROR"}'],
            {},
            names,
            now_ns=NOW,
        )
    )
    assert row[0] == {"service_name": "svc", "severity": "ERROR"}
    assert row[3] == {"request_id": "q1"}


def test_equal_and_decreasing_timestamps_keep_file_order_per_stream() -> None:
    lines = [
        '{"ts": 1714557600, "msg": "a"}',
        '{"ts": 1714557600, "msg": "b"}',  # equal: bumped
        '{"ts": 1714557500, "msg": "c"}',  # earlier: bumped
        '{"ts": 1714557700, "msg": "d"}',  # later: kept
    ]
    ts = [r[1] for r in flat(lines_to_streams(lines, {"job": "x"}, now_ns=NOW))]
    assert ts == [T0, T0 + 1, T0 + 2, T0 + 100 * 1_000_000_000]


def test_lines_without_timestamp_use_the_clock_and_stay_ordered() -> None:
    ticks = iter([NOW, NOW, NOW - 5, NOW + 10])
    rows = flat(lines_to_streams(["a", "b", "c", "d"], {"job": "x"}, now_ns=lambda: next(ticks)))
    assert [r[1] for r in rows] == [NOW, NOW + 1, NOW + 2, NOW + 10]


def test_plain_line_after_an_old_timestamped_line_stays_next_to_it() -> None:
    lines = [
        '{"ts": 1714557600, "level": "error", "msg": "Traceback follows"}',
        '{"ts": 1714557601, "level": "error", "msg": "second"}',
    ]
    rows = flat(lines_to_streams([lines[0], lines[1]], {"job": "x"}, now_ns=NOW))
    assert [r[1] for r in rows] == [T0, T0 + 1_000_000_000]
    rows = flat(
        lines_to_streams(
            ['{"ts": 1714557600, "msg": "start"}', "  File x.py, line 3", '{"ts": 1714557601}'],
            {"job": "x"},
            now_ns=NOW,
        )
    )
    assert [r[1] for r in rows] == [T0, T0 + 1, T0 + 1_000_000_000]


def test_batches_hold_at_most_batch_size_entries() -> None:
    stats = IngestStats()
    lines = [f'{{"run_id":"r{i % 7}","agent":"a{i % 3}"}}' for i in range(25)] + ["", ""]
    batches = list(lines_to_streams(lines, {}, now_ns=NOW, batch_size=10, stats=stats))
    sizes = [sum(len(s.entries) for s in b) for b in batches]
    assert sizes == [10, 10, 5]
    assert (stats.lines, stats.skipped, len(stats.run_ids)) == (25, 2, 7)
    with pytest.raises(ValueError):
        list(lines_to_streams(["x"], batch_size=0))


def test_binary_junk_and_huge_lines_never_crash() -> None:
    junk = bytes(range(256)) * 4  # every byte value, including NUL and newlines
    big = b'{"msg":"' + b"x" * 1_000_000 + b'","level":"info"}'
    data = junk + b"\n" + big + b"\n" + b"\xff\xfe\x00{not json\n"
    stats = IngestStats()
    rows = flat(lines_to_streams(read_lines(io.BytesIO(data)), {}, now_ns=NOW, stats=stats))
    assert stats.lines == len(rows)
    assert any(r[0] == {"level": "info"} and len(r[2]) == len(big) for r in rows)
    for _, _, line, _ in rows:
        line.encode("utf-8")  # always valid text
        assert "\n" not in line
    assert [r[2] for r in rows if "not json" in r[2]] == ["\\xff\\xfe\x00{not json"]


def test_read_lines_caps_an_endless_line() -> None:
    stats = IngestStats()
    data = b"a" * 5000 + b"\nshort\n" + b"b" * 3000
    got = list(read_lines(io.BytesIO(data), max_bytes=1024, stats=stats))
    assert got == [b"a" * 1024, b"short\n", b"b" * 1024]
    assert stats.oversized == 2
