"""The ports: small Protocols that the facade talks to. Adapters implement them.

| port       | embedded default             | production                        |
|------------|------------------------------|-----------------------------------|
| LogSource  | backend.embedded.logstore    | Grafana Loki over HTTP            |
| TaskStore  | backend.embedded.tasks       | PostgreSQL (asyncpg)              |
| Cache      | backend.cache.MemoryCache    | memory LRU in front of Redis      |
| Summarizer | backend.summarize.extractive | OpenRouter through the openai SDK |
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from .models import (
    DEFAULT_TENANT,
    AgentEvent,
    CacheStats,
    Direction,
    Labels,
    PushResult,
    QueryResult,
    SourceHealth,
    Stream,
    Summary,
    TailBatch,
    Task,
    TaskFilter,
    TaskPage,
    TaskSort,
    TriageState,
)


class LogSource(Protocol):
    """Loki's read API (and push, for stores that accept it)."""

    async def push(self, streams: Sequence[Stream], tenant: str = DEFAULT_TENANT) -> PushResult:
        """Store entries. Returns only once accepted entries are durable."""
        ...

    async def query_range(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int = 100,
        direction: Direction = Direction.BACKWARD,
        step_ns: int | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> QueryResult:
        """A log query (entries with start <= ts < end) or a metric query (a matrix)."""
        ...

    async def query_instant(
        self,
        query: str,
        time_ns: int,
        *,
        limit: int = 100,
        direction: Direction = Direction.BACKWARD,
        tenant: str = DEFAULT_TENANT,
    ) -> QueryResult:
        """A metric query evaluated at one instant (a vector or a scalar)."""
        ...

    async def labels(
        self, start_ns: int, end_ns: int, query: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[str]: ...

    async def label_values(
        self,
        name: str,
        start_ns: int,
        end_ns: int,
        query: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[str]: ...

    async def series(
        self, selectors: Sequence[str], start_ns: int, end_ns: int, tenant: str = DEFAULT_TENANT
    ) -> list[Labels]: ...

    def tail(
        self,
        query: str,
        start_ns: int | None = None,
        *,
        limit: int = 100,
        tenant: str = DEFAULT_TENANT,
    ) -> AsyncIterator[TailBatch]:
        """Backfill up to `limit` newest entries since `start_ns`, then follow new ones."""
        ...

    async def health(self) -> SourceHealth: ...

    async def close(self) -> None: ...


class TaskStore(Protocol):
    """The task (run) table."""

    async def apply_events(self, events: Sequence[AgentEvent], tenant: str = DEFAULT_TENANT) -> int:
        """Fold events into run records (insert or update). Returns the number of runs touched.
        Idempotent for a repeated event only where the event itself is (counts are additive)."""
        ...

    async def list(
        self,
        flt: TaskFilter,
        *,
        sort: TaskSort = TaskSort.FAILING_FIRST,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage: ...

    async def get(self, run_id: str, tenant: str = DEFAULT_TENANT) -> Task | None: ...

    async def set_triage(
        self,
        run_id: str,
        state: TriageState,
        *,
        by: str,
        note: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Task: ...

    async def set_status(
        self, run_id: str, status: str, *, at_ns: int | None = None, tenant: str = DEFAULT_TENANT
    ) -> Task: ...

    async def counts(self, flt: TaskFilter) -> dict[str, int]:
        """Runs by status (stalled derived), for the filter."""
        ...

    async def save_summary(self, summary: Summary, tenant: str = DEFAULT_TENANT) -> None: ...

    async def get_summary(
        self, run_id: str, input_hash: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> Summary | None: ...

    async def health(self) -> SourceHealth: ...

    async def close(self) -> None: ...


class Cache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def ttl(self, key: str) -> float | None:
        """Seconds left, or None when the key is absent or has no expiry."""
        ...

    async def stats(self) -> list[CacheStats]:
        """One entry per level."""
        ...

    async def close(self) -> None: ...


class Summarizer(Protocol):
    name: str

    def summarize(self, task: Task, lines: Sequence[str]) -> AsyncIterator[str]:
        """Stream the summary text in chunks."""
        ...
