"""Short, fixed-width renderings of run facts for 80-column tables."""

from __future__ import annotations

import time

from rich.text import Text

from backend.models import RunStatus, Task, TriageState

from .clock import NS
from .sanitize import sanitize

# glyph, style: the glyph alone tells the status apart when there is no colour (NO_COLOR)
STATUS_LOOK: dict[RunStatus, tuple[str, str]] = {
    RunStatus.FAILED: ("✗", "bold red"),
    RunStatus.TIMEOUT: ("⊗", "bold red"),
    RunStatus.STALLED: ("◐", "bold yellow"),
    RunStatus.RUNNING: ("●", "cyan"),
    RunStatus.SUCCEEDED: ("✓", "green"),
    RunStatus.CANCELLED: ("⊘", "bright_black"),
}

TRIAGE_LOOK: dict[TriageState, tuple[str, str]] = {
    TriageState.NEW: ("new", "bold"),
    TriageState.ACKED: ("ack", "yellow"),
    TriageState.RESOLVED: ("res", "green"),
    TriageState.IGNORED: ("ign", "bright_black"),
}


def status_text(status: RunStatus) -> Text:
    glyph, style = STATUS_LOOK.get(status, ("?", ""))
    return Text(glyph, style=style)


def status_label(status: RunStatus) -> Text:
    glyph, style = STATUS_LOOK.get(status, ("?", ""))
    return Text(f"{glyph} {status.value}", style=style)


def triage_text(state: TriageState) -> Text:
    label, style = TRIAGE_LOOK.get(state, (state.value[:3], ""))
    return Text(label, style=style)


def short_id(run_id: str, width: int = 8) -> str:
    """A run id shortened for a table: a `run-` prefix dropped, then the first `width` chars."""
    rid = run_id[4:] if run_id.startswith("run-") and len(run_id) > 4 else run_id
    return sanitize(rid[:width])


def ago(ns: int | None, now_ns: int) -> str:
    """Relative age: `now`, `42s`, `5m`, `3h`, `2d`."""
    if ns is None:
        return "–"
    s = max(0, (now_ns - ns) // NS)
    if s < 5:
        return "now"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def duration(ns: int | None) -> str:
    """`0.4s`, `21.6s`, `3m05s`, `1h02m`, `2d03h`."""
    if ns is None:
        return "–"
    s = ns / NS
    if s < 60:
        return f"{s:.1f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def live_duration(task: Task, now_ns: int) -> int | None:
    """A running (or stalled) run's duration grows with the clock; an ended one is fixed."""
    if task.started_at is None:
        return None
    if task.ended_at is None and task.status in (RunStatus.RUNNING, RunStatus.STALLED):
        return max(0, now_ns - task.started_at)
    return task.duration_ns


def tokens(n: int) -> str:
    if n < 1000:
        return str(n)
    if n < 9_950:
        return f"{n / 1000:.1f}k"
    if n < 999_500:
        return f"{round(n / 1000)}k"
    return f"{n / 1_000_000:.1f}M"


def cost(usd: float) -> str:
    if usd <= 0:
        return "–"
    if usd < 1:
        return f"${usd:.3f}"
    if usd < 100:
        return f"${usd:.2f}"
    return f"${usd:.0f}"


def clock_time(ns: int) -> str:
    """Local wall time `HH:MM:SS`."""
    return time.strftime("%H:%M:%S", time.localtime(ns / NS))


def clock_time_ms(ns: int) -> str:
    """Local wall time `HH:MM:SS.mmm`."""
    return f"{clock_time(ns)}.{ns // 1_000_000 % 1000:03d}"


def timestamp(ns: int | None) -> str:
    """Local `YYYY-MM-DD HH:MM:SS`."""
    if ns is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / NS))
