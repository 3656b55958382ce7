"""PostgreSQL adapters (asyncpg): the production TaskStore.

Versioned SQL migrations ship inside this package (backend/postgres/migrations/NNN_name.sql) and
are applied by `PostgresTaskStore.open()` under an advisory lock.
"""

from __future__ import annotations

from .tasks import (
    MIGRATION_LOCK_ID,
    NOTIFY_CHANNEL,
    Migration,
    PostgresTaskStore,
    load_migrations,
)

__all__ = [
    "MIGRATION_LOCK_ID",
    "NOTIFY_CHANNEL",
    "Migration",
    "PostgresTaskStore",
    "load_migrations",
]
