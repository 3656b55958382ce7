"""In-process cache: LRU + TTL, bounded by entry count and by total bytes.

`MemoryCache` implements `ports.Cache` (level "memory"). Every operation is O(1): an
`OrderedDict` keeps recency order (most recently used at the end). Expiry is lazy: an expired
entry is dropped when it is read, or when it reaches the LRU end while room is being made (then
it counts as an expiration, not an eviction); `purge_expired()` sweeps everything at once.

`get_or_compute` puts single-flight in front of any `ports.Cache`: concurrent callers for the
same key share one computation (a summary costs money; ten presses must not pay ten times).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

from .errors import UsageError
from .models import CacheStats
from .ports import Cache

__all__ = ["MemoryCache", "get_or_compute"]


class _Entry:
    __slots__ = ("cost", "expires_at", "value")

    def __init__(self, value: bytes, expires_at: float | None, cost: int) -> None:
        self.value = value
        self.expires_at = expires_at  # clock() deadline; None = never expires
        self.cost = cost  # bytes charged against max_bytes


class MemoryCache:
    """LRU + TTL cache of bytes.

    - `max_entries`, `max_bytes`: both bound the cache; the least recently used entries are
      evicted until both hold. An entry is charged `len(key) + len(value)` bytes; a single value
      bigger than `max_bytes` is not stored at all (it would evict everything else).
    - `ttl` on `set`: seconds; None means `default_ttl`; `math.inf` means never expire;
      `ttl <= 0` stores nothing and removes the key (the value is already stale).
    - `default_ttl=None`: entries never expire unless `set` gives a ttl.
    - `clock`: monotonic seconds; injectable so tests control time.

    Stats: `size` is the number of entries, `max_size` is `max_entries`; `bytes_used` and
    `max_bytes` are properties for the byte bound.
    """

    level: Final = "memory"

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 64 << 20,
        default_ttl: float | None = 300,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise UsageError(f"cache max_entries must be at least 1, got {max_entries}")
        if max_bytes < 1:
            raise UsageError(f"cache max_bytes must be at least 1, got {max_bytes}")
        if default_ttl is not None and default_ttl <= 0:
            raise UsageError(f"cache default_ttl must be positive or None, got {default_ttl}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self._clock = clock
        self._data: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self._evictions = 0
        self._expirations = 0

    # ------------------------------------------------------------ sync core

    def get_nowait(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            self._misses += 1
            return None
        if entry.expires_at is not None and entry.expires_at <= self._clock():
            self._drop(key, entry)
            self._expirations += 1
            self._misses += 1
            return None
        self._data.move_to_end(key)
        self._hits += 1
        return entry.value

    def set_nowait(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if ttl is None:
            ttl = self.default_ttl
        old = self._data.get(key)
        if old is not None:
            self._drop(key, old)
        if ttl is not None and ttl <= 0:
            return
        cost = len(key) + len(value)
        if cost > self.max_bytes:
            return
        expires_at = None if ttl is None or math.isinf(ttl) else self._clock() + ttl
        self._data[key] = _Entry(value, expires_at, cost)
        self._bytes += cost
        self._sets += 1
        self._make_room()

    def delete_nowait(self, key: str) -> None:
        entry = self._data.get(key)
        if entry is not None:
            self._drop(key, entry)

    def ttl_nowait(self, key: str) -> float | None:
        entry = self._data.get(key)
        if entry is None or entry.expires_at is None:
            return None
        left = entry.expires_at - self._clock()
        if left <= 0:
            self._drop(key, entry)
            self._expirations += 1
            return None
        return left

    def stats_nowait(self) -> CacheStats:
        return CacheStats(
            level=self.level,
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            evictions=self._evictions,
            expirations=self._expirations,
            size=len(self._data),
            max_size=self.max_entries,
        )

    def purge_expired(self) -> int:
        """Drop every expired entry now (O(n)). Returns how many were dropped."""
        now = self._clock()
        dead = [
            k for k, e in self._data.items() if e.expires_at is not None and e.expires_at <= now
        ]
        for key in dead:
            self._drop(key, self._data[key])
        self._expirations += len(dead)
        return len(dead)

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        """Presence without touching recency or stats (an expired entry still counts)."""
        return key in self._data

    # ------------------------------------------------------------ ports.Cache

    async def get(self, key: str) -> bytes | None:
        return self.get_nowait(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.set_nowait(key, value, ttl)

    async def delete(self, key: str) -> None:
        self.delete_nowait(key)

    async def ttl(self, key: str) -> float | None:
        return self.ttl_nowait(key)

    async def stats(self) -> list[CacheStats]:
        return [self.stats_nowait()]

    async def close(self) -> None:
        self.clear()

    # ------------------------------------------------------------ internals

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._data[key]
        self._bytes -= entry.cost

    def _make_room(self) -> None:
        if len(self._data) <= self.max_entries and self._bytes <= self.max_bytes:
            return
        now = self._clock()
        while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
            _, entry = self._data.popitem(last=False)
            self._bytes -= entry.cost
            if entry.expires_at is not None and entry.expires_at <= now:
                self._expirations += 1
            else:
                self._evictions += 1


# ---------------------------------------------------------------- single-flight


class _LeaderCancelled(Exception):
    """The caller doing the computation was cancelled: a waiter takes over."""


# (loop id, cache id, key) -> the future of the computation in flight. An entry lives only while
# its computation runs (the leader holds the cache alive), so a reused id() cannot collide.
_inflight: dict[tuple[int, int, str], asyncio.Future[bytes]] = {}


async def get_or_compute(
    cache: Cache,
    key: str,
    compute: Callable[[], Awaitable[bytes]],
    ttl: float | None = None,
) -> bytes:
    """Return the cached value for `key`, or compute, store and return it.

    Concurrent callers for the same cache and key share one `compute()` call. If it raises, every
    waiter gets the exception and nothing is cached (the next call tries again). If the caller
    running it is cancelled, one of the waiters runs it instead. Errors from the cache itself
    propagate like errors from `compute`.
    """
    loop = asyncio.get_running_loop()
    flight = (id(loop), id(cache), key)
    while True:
        pending = _inflight.get(flight)
        if pending is None:
            break
        try:
            # shield: a waiter that is cancelled must not cancel the shared computation
            return await asyncio.shield(pending)
        except _LeaderCancelled:
            continue  # the leader went away before finishing; the first waiter to loop leads

    fut: asyncio.Future[bytes] = loop.create_future()
    _inflight[flight] = fut
    try:
        # Registered before the first await, so a caller arriving during the cache lookup
        # waits instead of starting a second computation.
        value = await cache.get(key)
        if value is None:
            value = await compute()
            await cache.set(key, value, ttl)
    except asyncio.CancelledError:
        fut.set_exception(_LeaderCancelled())
        fut.exception()  # mark retrieved: there may be no waiters to read it
        raise
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()
        raise
    else:
        fut.set_result(value)
        return value
    finally:
        if _inflight.get(flight) is fut:
            del _inflight[flight]
