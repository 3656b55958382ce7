"""The panes' time window: the last N seconds, from presets or a typed duration."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .clock import NS

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
MAX_SECONDS = 90 * 86400


@dataclass(frozen=True, slots=True)
class TimeRange:
    """The last `seconds` before now."""

    seconds: float

    @property
    def label(self) -> str:
        return duration_label(self.seconds)

    def window(self, now_ns: int) -> tuple[int, int]:
        return now_ns - int(self.seconds * NS), now_ns


PRESETS: tuple[TimeRange, ...] = tuple(
    TimeRange(s) for s in (15 * 60, 3600, 6 * 3600, 24 * 3600, 7 * 86400)
)


def duration_label(seconds: float) -> str:
    """`15m`, `1h`, `1h30m`, `7d`: the largest units that describe the span exactly."""
    s = round(seconds)
    if s <= 0:
        return "0s"
    if s == 86400:
        return "24h"
    out = []
    for unit in ("d", "h", "m", "s"):
        n, s = divmod(s, _UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def parse_duration(text: str) -> float:
    """`90m`, `2h30m`, `1.5d`, `2w` -> seconds. Raises ValueError with a readable message."""
    t = text.strip().lower().replace(" ", "")
    if not t:
        raise ValueError("type a duration such as 30m, 2h, 1d12h or 2w")
    pos, total = 0, 0.0
    for m in _PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(t):
        raise ValueError(
            f"{text.strip()!r} is not a duration: use a number and a unit (s m h d w), e.g. 2h30m"
        )
    if total < 60:
        raise ValueError("the time range must be at least 1m")
    if total > MAX_SECONDS:
        raise ValueError("the time range can be at most 90d")
    return total
