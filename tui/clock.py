"""The app's clock: wall time in integer nanoseconds. Tests inject a frozen one."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]

NS = 1_000_000_000


def system_clock() -> int:
    return time.time_ns()
