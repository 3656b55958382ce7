"""Loki's time, duration and step rules (backend.logql.timefmt)."""

from __future__ import annotations

import time

import pytest

from backend.errors import QueryError
from backend.logql.timefmt import (
    format_duration,
    now_ns,
    parse_duration,
    parse_step,
    parse_time,
    try_parse_go_duration,
)

S = 1_000_000_000
MS = 1_000_000
T0 = 1714557600  # 2024-05-01T10:00:00Z


@pytest.mark.parametrize("value", [None, ""])
def test_parse_time_empty_gives_default(value: str | None) -> None:
    assert parse_time(value, 42) == 42


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1714557600", T0 * S),  # 10 digits: seconds
        ("0", 0),
        ("9000000000", 9000000000 * S),  # the largest 10-digit seconds that fit int64 ns
        ("10000000000", 10000000000),  # 11 digits: nanoseconds
        ("1714557600000000001", T0 * S + 1),
        ("-5", -5 * S),
        ("1714557600.123", T0 * S + 123 * MS),
        ("1714557600.1234", T0 * S + 123 * MS),  # rounded to the millisecond
        ("1714557600.1236", T0 * S + 124 * MS),
        ("1714557600.", T0 * S),
        ("1.5", S + 500 * MS),
        ("2024-05-01T10:00:00Z", T0 * S),
        ("2024-05-01t10:00:00z", T0 * S),
        ("2024-05-01T10:00:00.5Z", T0 * S + 500 * MS),
        ("2024-05-01T10:00:00.123456789Z", T0 * S + 123456789),
        ("2024-05-01T12:00:00+02:00", T0 * S),
        ("2024-05-01T07:30:00-02:30", T0 * S),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_parse_time(value: str, expected: int) -> None:
    assert parse_time(value, -1) == expected


@pytest.mark.parametrize(
    "value",
    ["yesterday", "1e9", " 5", "5 ", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z",
     "2024-05-01T10:00:00", "2024-05-01 10:00:00Z", "2024-05-01T10:00:00.1234567890Z",
     "99999999999999999999", "nan.", "1_000", "9999999999"],
)  # fmt: skip
def test_parse_time_rejects_bad_values_naming_them(value: str) -> None:
    with pytest.raises(QueryError) as exc:
        parse_time(value, 0)
    assert repr(value) in str(exc.value)
    assert "RFC3339" in str(exc.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("5ns", 5),
        ("1us", 1_000),
        ("1µs", 1_000),
        ("250ms", 250 * MS),
        ("10s", 10 * S),
        ("15m", 900 * S),
        ("1h30m", 5400 * S),
        ("1.5h", 5400 * S),
        ("2d", 2 * 86400 * S),
        ("1w", 7 * 86400 * S),
        ("1y", 365 * 86400 * S),
        ("1m30s500ms", 90 * S + 500 * MS),
        (".5s", 500 * MS),
        ("0.1s", 100 * MS),
    ],
)
def test_parse_duration(value: str, expected: int) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["", "5", "abc", "-5m", "5m ", "5 m", "1.2.3s", "h", "5M"])
def test_parse_duration_rejects(value: str) -> None:
    with pytest.raises(QueryError, match="cannot parse"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.5s", 1500 * MS),
        ("-1s", -S),
        ("+2m", 120 * S),
        ("1h30m", 5400 * S),
        ("0", 0),
        ("300ms", 300 * MS),
        ("1d", None),  # Go's ParseDuration has no days
        ("5", None),
        ("", None),
        ("abc", None),
    ],
)
def test_try_parse_go_duration(value: str, expected: int | None) -> None:
    assert try_parse_go_duration(value) == expected


def test_parse_step_default_is_range_over_250_in_whole_seconds() -> None:
    assert parse_step(None, 0, 3600 * S) == 14 * S  # floor(3600 / 250)
    assert parse_step("", 0, 60 * S) == S  # at least one second
    assert parse_step(None, 0, 0) == S


@pytest.mark.parametrize(
    ("value", "expected"),
    [("15", 15 * S), ("0.5", 500 * MS), ("1m", 60 * S), ("1h", 3600 * S), ("2.5e1", 25 * S)],
)
def test_parse_step_values(value: str, expected: int) -> None:
    assert parse_step(value, 0, 3600 * S) == expected


@pytest.mark.parametrize("value", ["0", "-5", "0s"])
def test_parse_step_must_be_positive(value: str) -> None:
    with pytest.raises(QueryError, match="zero or negative query resolution step"):
        parse_step(value, 0, 3600 * S)


def test_parse_step_point_limit() -> None:
    assert parse_step("1", 0, 11_000 * S) == S  # exactly 11,000 is allowed
    with pytest.raises(QueryError, match="11,000 points"):
        parse_step("1", 0, 11_001 * S)


def test_parse_step_rejects_garbage() -> None:
    with pytest.raises(QueryError, match="'fast'"):
        parse_step("fast", 0, S)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (250 * MS, "250ms"),
        (5400 * S, "1h30m"),
        (86400 * S, "1d"),
        (7 * 86400 * S, "1w"),
        (1500, "1us500ns"),
        (-90 * S, "-1m30s"),
        (90061 * S, "1d1h1m1s"),
    ],
)
def test_format_duration(ns: int, text: str) -> None:
    assert format_duration(ns) == text
    if ns > 0:
        assert parse_duration(text) == ns


def test_now_ns() -> None:
    before = time.time_ns()
    got = now_ns()
    assert before <= got <= time.time_ns()
