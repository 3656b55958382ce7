"""Messages that workers post; `@on` handlers change the widgets (workers never do)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from backend.facade import Backend
from backend.models import PatternReport, SourceHealth, Summary, Task, TaskPage, TriageState


class BackendReady(Message):
    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend


class DemoLive(Message):
    """The demo fleet's backfill is in the store; it now runs live."""


@dataclass
class TasksLoaded(Message):
    generation: int
    page: TaskPage
    counts: dict[str, int]
    append: bool


@dataclass
class CountsLoaded(Message):
    generation: int
    key: object  # what they count (filters and time range)
    counts: dict[str, int]
    at: float  # time.monotonic() when asked


@dataclass
class PatternsLoaded(Message):
    generation: int
    report: PatternReport


@dataclass
class SummaryChunkArrived(Message):
    token: int
    run_id: str
    text: str
    summary: Summary | None


@dataclass
class SummaryFailed(Message):
    token: int
    run_id: str
    reason: str


@dataclass
class TriageDone(Message):
    task: Task
    previous: TriageState
    previous_note: str
    undo: bool


@dataclass
class HealthProbed(Message):
    probes: list[SourceHealth]


@dataclass
class ComponentFailed(Message):
    component: str
    reason: str


@dataclass
class ComponentRecovered(Message):
    component: str
