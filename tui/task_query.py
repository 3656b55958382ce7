"""What the Tasks pane asks for: text, quick filters, a pattern's runs, the sort."""

from __future__ import annotations

from dataclasses import dataclass, replace

from backend.models import FAILING_STATUSES, RunStatus, TaskFilter, TaskSort, TriageState

SORT_LABELS = {
    TaskSort.FAILING_FIRST: "failing first",
    TaskSort.NEWEST: "newest",
    TaskSort.OLDEST: "oldest",
}
_FAILING = tuple(s for s in RunStatus if s in FAILING_STATUSES)


@dataclass(frozen=True, slots=True)
class TaskQuery:
    text: str = ""
    failing_only: bool = False
    mine: bool = False  # "mine to triage": failing runs nobody has triaged yet
    agent: str = ""
    run_ids: tuple[str, ...] = ()
    pattern_label: str = ""
    sort: TaskSort = TaskSort.FAILING_FIRST

    def to_filter(self, since_ns: int | None) -> TaskFilter:
        statuses = _FAILING if (self.failing_only or self.mine) else ()
        return TaskFilter(
            statuses=statuses,
            agents=(self.agent,) if self.agent else (),
            triage=(TriageState.NEW,) if self.mine else (),
            since_ns=None if self.run_ids else since_ns,
            text=self.text,
            run_ids=self.run_ids,
        )

    @property
    def active(self) -> bool:
        return bool(self.text or self.failing_only or self.mine or self.agent or self.run_ids)

    def chips(self) -> list[str]:
        out = []
        if self.text:
            out.append(f"/{self.text}")
        if self.failing_only:
            out.append("failing")
        if self.mine:
            out.append("to triage")
        if self.agent:
            out.append(f"agent={self.agent}")
        if self.run_ids:
            out.append(f"pattern: {self.pattern_label}")
        return out

    def next_sort(self) -> TaskQuery:
        order = list(SORT_LABELS)
        return replace(self, sort=order[(order.index(self.sort) + 1) % len(order)])
