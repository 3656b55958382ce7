"""The app's own log: files under `<data_dir>/logs`, one per day (`error-YYYY-MM-DD.log`).

Never the screen: while the TUI runs, the root logger has only this handler (a stray stderr
handler would scribble over the dashboard).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TextIO

__all__ = ["DailyFileHandler", "log_dir", "setup_file_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_dir(data_dir: Path) -> Path:
    return data_dir / "logs"


class DailyFileHandler(logging.Handler):
    """Appends to `<directory>/error-YYYY-MM-DD.log` (local date), switching files at midnight."""

    def __init__(self, directory: Path, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.directory = directory
        self._date = ""
        self._stream: TextIO | None = None
        self.setFormatter(logging.Formatter(FORMAT))

    def path_for(self, when: float) -> Path:
        return self.directory / f"error-{time.strftime('%Y-%m-%d', time.localtime(when))}.log"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            date = time.strftime("%Y-%m-%d", time.localtime(record.created))
            if date != self._date or self._stream is None:
                self._close_stream()
                self.directory.mkdir(parents=True, exist_ok=True)
                self._stream = self.path_for(record.created).open("a", encoding="utf-8")
                self._date = date
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # a logging failure must never take the dashboard down
            self.handleError(record)

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self._close_stream()
        super().close()


def setup_file_logging(data_dir: Path, level: int = logging.WARNING) -> DailyFileHandler:
    """Route every log record (root logger) to the daily file; remove handlers that would write to
    the terminal. Returns the handler (the caller removes it on exit)."""
    handler = DailyFileHandler(log_dir(data_dir), level)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    logging.captureWarnings(True)
    return handler
