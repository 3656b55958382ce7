"""A one-line progress indicator for long CLI verbs (ingest, demo), drawn on stderr.

It draws only when its stream is a terminal, so pipes and log files never get `\\r` noise, and it
redraws at most every `interval` seconds so a fast loop does not spend its time on the terminal.
With a total it shows a bar and a percentage; without one, a count and a rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Call `update(done, total)` as work advances and `close()` (or use `with`) at the end."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        unit: str = "lines",
        interval: float = 0.1,
        width: int = 79,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.label = label
        self.unit = unit
        self.interval = interval
        self.width = width
        self._clock = clock
        self._t0 = clock()
        self._last_draw = -1e9
        self._drawn = False
        self.done = 0
        self.total: int | None = None

    def render(self) -> str:
        """The progress line for the current state (without the carriage return)."""
        elapsed = max(self._clock() - self._t0, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            text = f"{self.label} [{bar}] {frac * 100:5.1f}% {self.done}/{self.total} {self.unit}"
        else:
            text = f"{self.label} {self.done} {self.unit} ({rate:,.0f}/s)"
        return text[: self.width]

    def update(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self.stream.write("\r" + self.render() + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the progress line (the caller prints its own final line)."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
