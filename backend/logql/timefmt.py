"""Loki's rules for times, durations and steps (reference section 1). Pure functions, no I/O.

All results are integer nanoseconds. Errors are `QueryError`s that name the offending value.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
import re
import time

from ..errors import QueryError

NS_PER_SECOND = 1_000_000_000
MAX_POINTS = 11_000  # Loki's cap on (end - start) / step for a range query
_INT64_MAX = 2**63 - 1

# Prometheus units (y w d h m s ms) plus Go's (us µs μs ns).
_UNIT_NS: dict[str, int] = {
    "y": 365 * 86_400 * NS_PER_SECOND,
    "w": 7 * 86_400 * NS_PER_SECOND,
    "d": 86_400 * NS_PER_SECOND,
    "h": 3_600 * NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "s": NS_PER_SECOND,
    "ms": 1_000_000,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ns": 1,
}
_GO_UNITS = frozenset({"h", "m", "s", "ms", "us", "µs", "μs", "ns"})
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h|d|w|y)"  # "ms" before "m" and "s"
_DURATION_FULL = re.compile(rf"(?:{_NUMBER}{_UNIT})+")
_DURATION_PART = re.compile(rf"({_NUMBER})({_UNIT})")

_FLOAT_SECONDS = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def now_ns() -> int:
    """The current time in Unix nanoseconds."""
    return time.time_ns()


def _parts_ns(value: str, allowed: frozenset[str] | None) -> int | None:
    """Sum of `<number><unit>` parts, or None when `value` is not such a sequence. Fractions are
    exact (integer arithmetic), truncated to the nanosecond like Go."""
    if not _DURATION_FULL.fullmatch(value):
        return None
    total = 0
    for number, unit in _DURATION_PART.findall(value):
        if allowed is not None and unit not in allowed:
            return None
        scale = _UNIT_NS[unit]
        whole, _, frac = number.partition(".")
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
    return total


def parse_duration(value: str) -> int:
    """A duration in Prometheus syntax (`1w`, `2d`, `1h30m`, `15m`, `10s`, `250ms`), plus `us`/`ns`
    units and Go-style decimals (`1.5h`). Returns nanoseconds; "0" is zero. Negative values and
    anything else raise QueryError."""
    text = value
    if text == "0":
        return 0
    ns = _parts_ns(text, None) if text else None
    if ns is None:
        raise QueryError(
            f"cannot parse {value!r} as a duration: use a number and a unit, "
            "e.g. 250ms, 10s, 5m, 1h30m, 1.5h, 2d, 1w"
        )
    if ns > _INT64_MAX:
        raise QueryError(f"duration {value!r} is too large")
    return ns


def try_parse_go_duration(value: str) -> int | None:
    """Go's `time.ParseDuration` (units ns us µs ms s m h, optional sign, decimals), as Loki's
    duration label filters use it on label values. None when `value` is not a Go duration."""
    if not value:
        return None
    sign = 1
    text = value
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    ns = _parts_ns(text, _GO_UNITS)
    if ns is None or ns > _INT64_MAX + (sign < 0):
        return None
    return sign * ns


def format_duration(ns: int) -> str:
    """A compact duration, Prometheus style: 1h30m, 250ms, 2d, 1w, 0s. Sub-millisecond parts are
    written in us and ns. The output parses back with `parse_duration`."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    rest = abs(ns)
    out = []
    for unit in ("y", "w", "d", "h", "m", "s", "ms", "us", "ns"):
        scale = _UNIT_NS[unit]
        if rest >= scale:
            count, rest = divmod(rest, scale)
            out.append(f"{count}{unit}")
    return sign + "".join(out)


def _round_half_away(x: float) -> float:
    # Go's math.Round; Python's round() is half-to-even.
    return math.copysign(math.floor(abs(x) + 0.5), x)


def _time_error(value: str) -> QueryError:
    return QueryError(
        f"cannot parse {value!r} as a time: use Unix seconds (1714557600 or 1714557600.123), "
        "Unix nanoseconds (1714557600000000000) or RFC3339 (2024-05-01T10:00:00Z)"
    )


def parse_time(value: str | None, default_ns: int) -> int:
    """A query time (`start`, `end`, `time`) the way Loki reads it:

    1. empty or None: `default_ns`;
    2. contains "." and is a float: Unix seconds, the fraction rounded to milliseconds;
    3. an integer of at most 10 characters: Unix seconds; longer: Unix nanoseconds;
    4. RFC3339 / RFC3339Nano (`Z` or an offset, up to 9 fraction digits).
    """
    if value is None or value == "":
        return default_ns
    if "." in value and _FLOAT_SECONDS.fullmatch(value):
        seconds = float(value)
        if not math.isfinite(seconds) or abs(seconds) > _INT64_MAX / NS_PER_SECOND:
            raise _time_error(value)
        frac, whole = math.modf(seconds)
        millis = int(_round_half_away(frac * 1000))
        return int(whole) * NS_PER_SECOND + millis * 1_000_000
    if _INTEGER.fullmatch(value):
        number = int(value)
        if not -(2**63) <= number <= _INT64_MAX:
            raise _time_error(value)
        if len(value) <= 10:
            if abs(number) > _INT64_MAX // NS_PER_SECOND:
                raise _time_error(value)
            return number * NS_PER_SECOND
        return number
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise _time_error(value)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac_digits, zone = m.group(7) or "", m.group(8)
    try:
        _dt.datetime(year, month, day, hour, minute, second)  # validates the calendar fields
    except ValueError:
        raise _time_error(value) from None
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if zone not in ("Z", "z"):
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise _time_error(value)
        offset = hours * 3600 + minutes * 60
        seconds -= offset if zone[0] == "+" else -offset
    nanos = int(frac_digits.ljust(9, "0")) if frac_digits else 0
    return seconds * NS_PER_SECOND + nanos


def default_step_ns(start_ns: int, end_ns: int) -> int:
    """Loki's default step: max(1, floor((end - start) / 250)) whole seconds."""
    seconds = math.floor((end_ns - start_ns) / NS_PER_SECOND / 250)
    return max(1, seconds) * NS_PER_SECOND


def check_points(start_ns: int, end_ns: int, step_ns: int) -> None:
    """Loki's 400s for a bad step: not positive, or more than 11,000 points per series."""
    if step_ns <= 0:
        raise QueryError(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
        )
    if (end_ns - start_ns) // step_ns > MAX_POINTS:
        raise QueryError(
            "exceeded maximum resolution of 11,000 points per timeseries. "
            "Try decreasing the query resolution (?step=XX)"
        )


def parse_step(value: str | None, start_ns: int, end_ns: int) -> int:
    """The `step` of a range query: float seconds ("15", "0.5") or a duration ("15s", "1m").
    Empty or None gives Loki's default. Raises QueryError for a step <= 0 or one that would give
    more than 11,000 points between start and end."""
    if value is None or value == "":
        step = default_step_ns(start_ns, end_ns)
    elif _FLOAT_SECONDS.fullmatch(value):
        seconds = float(value)
        if not math.isfinite(seconds) or abs(seconds) * NS_PER_SECOND > _INT64_MAX:
            raise QueryError(f"cannot parse {value!r} as a step: it overflows int64")
        step = round(seconds * NS_PER_SECOND)
    else:
        try:
            step = parse_duration(value)
        except QueryError:
            raise QueryError(
                f"cannot parse {value!r} as a step: use seconds (15, 0.5) or a duration (15s, 1m)"
            ) from None
    check_points(start_ns, end_ns, step)
    return step
