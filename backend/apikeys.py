"""API keys for pushers and scripts: each bound to one tenant and one role, stored hashed.

    store = SqliteApiKeyStore(settings.data_dir / "apikeys.sqlite3")
    new = await store.create("acme", Role.OPERATOR, name="fleet-a pushers")
    print(new.secret)                       # shown once; only its hash is kept
    key = await store.verify(new.secret)    # -> ApiKey, or None (unknown, wrong or revoked)

A secret reads `alk_<key id>_<43 random url-safe characters>` (256 random bits). The key id is
public (it is listed, logged and used to revoke); the rest is never stored: the table keeps the
SHA-256 of the whole secret. A fast hash is the right tool for a random 256-bit secret (a slow
password hash only helps secrets a person chose); the comparison is constant-time.

`ApiKeyStore` is the port; `SqliteApiKeyStore` keeps a small table in its own SQLite file in the
data directory (a PostgreSQL store can follow the same Protocol). Successful checks are remembered
for `VERIFY_CACHE_S` seconds so a busy pusher does not cost a database read per request: a key
revoked by *another* process stops working within that time (at once in the process that revoked
it). `last_used_at` is written at most once a minute per key.

Roles: viewer < operator < admin. A viewer reads; an operator also triages and pushes; an admin
may do everything (manage keys, ...). `Role.allows(needed)` compares them.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from .embedded.sqlite_exec import SqliteExecutor
from .errors import NotFound, UsageError

__all__ = [
    "FILE_NAME",
    "KEY_PREFIX",
    "ApiKey",
    "ApiKeyStore",
    "NewApiKey",
    "Role",
    "SqliteApiKeyStore",
    "check_tenant",
    "default_path",
    "parse_role",
]

KEY_PREFIX = "alk_"
FILE_NAME = "apikeys.sqlite3"  # in the data dir, beside the embedded store
VERIFY_CACHE_S = 10.0
LAST_USED_EVERY_NS = 60 * 1_000_000_000
MAX_NAME = 200
_SECRET_RE = re.compile(r"alk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self.value]

    def allows(self, needed: Role) -> bool:
        """True when this role may do what `needed` may."""
        return self.rank >= needed.rank


_RANKS = {"viewer": 0, "operator": 1, "admin": 2}


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise UsageError(f"unknown role {value!r}: expected viewer, operator or admin") from None


_TENANT_OK = re.compile(r"[A-Za-z0-9!\-_.*'()]{1,150}")


def check_tenant(tenant: str) -> str:
    """A tenant id as Loki accepts it (letters, digits and ``!-_.*'()``, 1-150 characters, not
    `.` or `..`); raises UsageError naming the problem."""
    if not _TENANT_OK.fullmatch(tenant) or tenant in (".", ".."):
        raise UsageError(
            f"invalid tenant {tenant!r}: use 1-150 letters, digits or !-_.*'() "
            "(and not '.' or '..')"
        )
    return tenant


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's public record (never its secret)."""

    key_id: str
    tenant: str
    role: Role
    name: str = ""
    created_at: int = 0  # ns
    created_by: str = ""
    last_used_at: int | None = None  # ns, updated at most once a minute
    revoked_at: int | None = None  # ns

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown once


class ApiKeyStore(Protocol):
    """Where API keys live (hashed)."""

    async def create(
        self, tenant: str, role: Role, *, name: str = "", created_by: str = ""
    ) -> NewApiKey: ...

    async def verify(self, secret: str) -> ApiKey | None:
        """The active key this secret belongs to, or None."""
        ...

    async def list_keys(
        self, tenant: str | None = None, *, include_revoked: bool = False
    ) -> list[ApiKey]:
        """Keys, newest first; `tenant` None lists every tenant's."""
        ...

    async def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """Revoke a key (idempotent); NotFound when there is no such key (in `tenant`)."""
        ...

    async def close(self) -> None: ...


def default_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def looks_like_key(secret: str) -> bool:
    return secret.startswith(KEY_PREFIX)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL DEFAULT '',
    last_used_at INTEGER,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, created_at);
"""

_COLUMNS = "key_id, tenant, role, name, created_at, created_by, last_used_at, revoked_at"


def _row(row: tuple[object, ...]) -> ApiKey:
    key_id, tenant, role, name, created_at, created_by, last_used, revoked = row
    return ApiKey(
        key_id=str(key_id),
        tenant=str(tenant),
        role=Role(str(role)),
        name=str(name),
        created_at=int(created_at),  # type: ignore[call-overload]
        created_by=str(created_by),
        last_used_at=None if last_used is None else int(last_used),  # type: ignore[call-overload]
        revoked_at=None if revoked is None else int(revoked),  # type: ignore[call-overload]
    )


class SqliteApiKeyStore:
    """API keys in a small SQLite file (see module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = SqliteExecutor(self.path, init_sql=_SCHEMA, readers=1)
        self._verified: dict[str, tuple[float, str, ApiKey]] = {}  # key_id -> (until, hash, key)
        self._touched: dict[str, int] = {}  # key_id -> last_used_at written (ns)
        self._pending: set[asyncio.Task[None]] = set()

    async def create(
        self, tenant: str, role: Role, *, name: str = "", created_by: str = ""
    ) -> NewApiKey:
        check_tenant(tenant)
        if len(name) > MAX_NAME:
            raise UsageError(f"the key name is too long: at most {MAX_NAME} characters")
        key_id = secrets.token_hex(6)
        secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(
            key_id=key_id,
            tenant=tenant,
            role=Role(role),
            name=name,
            created_at=time.time_ns(),
            created_by=created_by,
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO api_keys (key_id, secret_sha256, tenant, role, name, created_at, "
                "created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    hash_secret(secret),
                    tenant,
                    key.role.value,
                    name,
                    key.created_at,
                    created_by,
                ),
            )

        await self._db.write(insert)
        return NewApiKey(key, secret)

    async def verify(self, secret: str) -> ApiKey | None:
        m = _SECRET_RE.fullmatch(secret)
        if m is None:
            return None
        key_id = m.group(1)
        digest = hash_secret(secret)
        now = time.monotonic()
        hit = self._verified.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[2] if hmac.compare_digest(hit[1], digest) else None

        def fetch(conn: sqlite3.Connection) -> tuple[str, ApiKey] | None:
            row = conn.execute(
                f"SELECT secret_sha256, {_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
            return None if row is None else (str(row[0]), _row(tuple(row[1:])))

        found = await self._db.read(fetch)
        if found is None:
            return None
        stored, key = found
        if not hmac.compare_digest(stored, digest) or not key.active:
            self._verified.pop(key_id, None)
            return None
        if len(self._verified) > 10_000:
            self._verified.clear()
        self._verified[key_id] = (now + VERIFY_CACHE_S, stored, key)
        self._touch(key)
        return key

    def _touch(self, key: ApiKey) -> None:
        """Record the key's use, at most once a minute, without making the caller wait."""
        now = time.time_ns()
        if now - self._touched.get(key.key_id, key.last_used_at or 0) < LAST_USED_EVERY_NS:
            return
        self._touched[key.key_id] = now

        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (now, key.key_id))

        async def run() -> None:
            try:
                await self._db.write(update)
            except Exception:  # best effort: a busy database must not fail the request
                self._touched.pop(key.key_id, None)

        task = asyncio.create_task(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def list_keys(
        self, tenant: str | None = None, *, include_revoked: bool = False
    ) -> list[ApiKey]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        sql = f"SELECT {_COLUMNS} FROM api_keys"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, key_id"

        def fetch(conn: sqlite3.Connection) -> list[ApiKey]:
            return [_row(tuple(r)) for r in conn.execute(sql, params)]

        return await self._db.read(fetch)

    async def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey:
        now = time.time_ns()

        def update(conn: sqlite3.Connection) -> ApiKey | None:
            sql = f"SELECT {_COLUMNS} FROM api_keys WHERE key_id = ?"
            params: list[object] = [key_id]
            if tenant is not None:
                sql += " AND tenant = ?"
                params.append(tenant)
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            key = _row(tuple(row))
            if key.revoked_at is not None:
                return key
            conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (now, key_id))
            return replace(key, revoked_at=now)

        key = await self._db.write(update)
        self._verified.pop(key_id, None)
        if key is None:
            raise NotFound(f"no API key with id {key_id!r}")
        return key

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._db.close()
