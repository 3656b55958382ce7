"""Run sqlite3 work off the event loop: one writer thread, a few reader threads.

SQLite allows one writer at a time; WAL mode lets readers run beside it without blocking. So the
executor owns exactly one writer connection on a dedicated thread (writes are serialized there, in
submission order, without lock contention inside this process) and a small pool of query-only
connections on their own threads. Threads and connections are created once and reused: a call
costs one hop to a worker thread and back.

sqlite3 failures that mean the database itself is in trouble (locked, unreadable, corrupt, full,
read-only) come out as `StorageError` naming the file and what to do. Programming errors
(IntegrityError, ProgrammingError, ...) and exceptions raised by the caller's function propagate
unchanged (after the transaction is rolled back).

An in-memory database (":memory:") is not supported: each connection would see its own database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ..errors import StorageError

__all__ = ["SqliteExecutor", "storage_error"]

T = TypeVar("T")

CHECKPOINT_EVERY_S = 1.0
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file is cut back to after it is reset

# Errors that are bugs in our SQL or the caller's data, not trouble with the database file.
_PASS_THROUGH = (
    sqlite3.IntegrityError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
    sqlite3.DataError,
    sqlite3.NotSupportedError,
)


def storage_error(path: Path, exc: BaseException) -> StorageError:
    """A StorageError that names the file, says what went wrong in plain words and what to do."""
    text = str(exc)
    low = text.lower()
    if "locked" in low or "busy" in low:
        advice = (
            "is locked by another process that did not let go in time; close other agentlog "
            "instances using this file (or point this one at another file) and retry"
        )
    elif "full" in low:
        advice = "cannot grow: the disk is full; free some space or shorten the retention"
    elif "not a database" in low or "malformed" in low or "corrupt" in low:
        advice = (
            "is not a usable SQLite database (corrupt, or some other kind of file); move it "
            "aside and agentlog will create a fresh one"
        )
    elif "readonly" in low or "read-only" in low:
        advice = "is read-only; check the file's and its directory's permissions"
    elif "unable to open" in low or "i/o error" in low or isinstance(exc, OSError):
        advice = (
            "cannot be opened, read or written; check that its directory exists and is "
            "writable and that the disk is healthy"
        )
    else:
        advice = "could not be used"
    return StorageError(f"SQLite database {path} {advice} ({text})")


class SqliteExecutor:
    """One writer connection on its own thread plus `readers` query-only connections.

    PRAGMAs on every connection: journal_mode=WAL, synchronous=NORMAL, busy_timeout, foreign_keys.
    `init_sql` (a script) runs once on the writer connection when it is first opened, before any
    reader connects; put `CREATE TABLE IF NOT EXISTS ...` there. The parent directory is created.
    Connections open lazily on first use, so constructing an executor does no I/O.
    """

    def __init__(
        self,
        path: Path,
        *,
        init_sql: str = "",
        readers: int = 2,
        busy_timeout_ms: int = 5000,
    ) -> None:
        if str(path) == ":memory:":
            raise ValueError("SqliteExecutor needs a file path, not ':memory:'")
        self.path = Path(path)
        self._init_sql = init_sql
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(
            max_workers=max(1, readers), thread_name_prefix="sqlite-reader"
        )
        self._wconn: sqlite3.Connection | None = None  # touched only on the writer thread
        self._rlocal = threading.local()
        self._rconns: list[sqlite3.Connection] = []
        self._rconns_lock = threading.Lock()
        self._ready = False  # the writer connection exists (so the schema does too)
        self._closed = False
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True
        )

    # ------------------------------------------------------------ connections (worker threads)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so transactions are explicit.
        # check_same_thread=False only so close() can close reader connections from one thread;
        # each connection is otherwise used by a single thread.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _writer_conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # Checkpoints (and their fsync) run on their own thread, not inside a commit:
                # an automatic one stalled the push that triggered it by 25-150 ms.
                conn.execute("PRAGMA wal_autocheckpoint=0")
                conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                if self._init_sql:
                    conn.executescript(self._init_sql)
            except BaseException:
                conn.close()
                raise
            self._wconn = conn
            self._ready = True
            self._checkpointer.start()
        return self._wconn

    def _checkpoint_loop(self) -> None:
        """Every CHECKPOINT_EVERY_S, copy committed WAL pages into the database (PASSIVE: never
        waits for, nor blocks, readers or the writer). A failure is retried at the next tick;
        the writer's close does the final checkpoint."""
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_EVERY_S):
                try:
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except (sqlite3.Error, OSError):
                    continue
        finally:
            if conn is not None:
                conn.close()

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._rlocal, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._rlocal.conn = conn
            with self._rconns_lock:
                self._rconns.append(conn)
        return conn

    def _run_write(self, fn: Callable[[sqlite3.Connection], T], transaction: bool) -> T:
        try:
            conn = self._writer_conn()
            if not transaction:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result
        except _PASS_THROUGH:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            raise storage_error(self.path, exc) from exc

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._reader_conn()
            # One read transaction: every query fn makes sees the same snapshot.
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except _PASS_THROUGH:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            raise storage_error(self.path, exc) from exc

    def _close_all(self) -> None:
        # Runs on the writer thread: the checkpointer and readers first, so the writer's close
        # can checkpoint the WAL.
        self._stop_checkpoints.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join()
        self._readers.shutdown(wait=True)
        with self._rconns_lock:
            conns, self._rconns = self._rconns, []
        for conn in conns:
            conn.close()
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    # ------------------------------------------------------------ async API (event loop)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"SQLite database {self.path} is closed")

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, transaction: bool = True) -> T:
        """Run `fn(conn)` on the writer thread inside BEGIN IMMEDIATE ... COMMIT (rolled back if
        it raises). `transaction=False` runs it bare (for VACUUM, checkpoints, PRAGMAs)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._run_write, fn, transaction)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on a query-only reader connection, inside one read transaction."""
        self._check_open()
        loop = asyncio.get_running_loop()
        if not self._ready:
            # The writer creates the file, sets WAL and runs init_sql; readers must come after.
            await loop.run_in_executor(self._writer, self._run_write, _noop, False)
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    async def close(self) -> None:
        """Close every connection and stop the threads. Idempotent; later calls raise."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._close_all)
        finally:
            self._writer.shutdown(wait=False)


def _noop(conn: sqlite3.Connection) -> None:
    return None
