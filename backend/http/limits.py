"""Rate limits of the HTTP port: per identity and per route, with the `limits` library.

    limiter = RateLimiter(RateLimits(), redis_url=None)         # in-process counters
    limiter = RateLimiter(RateLimits(), redis_url="redis://...")  # shared through Redis
    retry_after = await limiter.hit("read", "jwt:alice@acme", "/api/tasks")  # None: allowed

Each request counts against one *category* (`read`, `write`, `push`, `expensive`) for the key
`<identity>|<route template>`, so one noisy script cannot starve the other routes or the other
callers. Failed authentications count per client address (`auth_failures`), which bounds password
guessing. Limits use the sliding-window counter strategy.

With Redis configured (`redis.enabled`), counters live in Redis (`implementation="redispy"`; keys
under `<redis.key_prefix>ratelimit`), so every `agentlog serve` instance on that Redis shares them.
If the storage fails (Redis down), requests are let through and the failure is counted in
`errors`: a rate limiter must not turn an outage of the cache into an outage of the API.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from ..config import RateLimitSettings

__all__ = ["CATEGORIES", "RateLimiter", "RateLimits"]

log = logging.getLogger("agentlog.http")

REDIS_TIMEOUT_S = 0.5  # a slow Redis must not hold every request
CATEGORIES = ("read", "write", "push", "expensive", "auth_failures")


# The limits are the `server.rate_limits` settings (one definition, validated there); code and
# tests build them the same way: `RateLimits(read="3/minute")`.
RateLimits = RateLimitSettings


def _parse_limits(limits: RateLimits) -> dict[str, list[RateLimitItem]]:
    """Each category's limits ("10/second;100/minute" is two)."""
    return {
        name: [parse(part) for part in getattr(limits, name).split(";") if part.strip()]
        for name in CATEGORIES
    }


def _storage_uri(redis_url: str) -> str:
    for scheme, mapped in (
        ("rediss://", "async+rediss://"),
        ("redis://", "async+redis://"),
        ("unix://", "async+redis+unix://"),
    ):
        if redis_url.startswith(scheme):
            return mapped + redis_url[len(scheme) :]
    raise ValueError(f"not a Redis URL: {redis_url!r}")


class RateLimiter:
    """See module doc. `errors` counts storage failures (requests let through)."""

    def __init__(
        self,
        limits: RateLimits | None = None,
        *,
        redis_url: str | None = None,
        key_prefix: str = "agentlog:",
    ) -> None:
        self.limits = limits or RateLimits()
        self.items = _parse_limits(self.limits)
        self.shared = redis_url is not None
        self.storage: Storage
        if redis_url is not None:
            self.storage = RedisStorage(
                _storage_uri(redis_url),
                implementation="redispy",
                key_prefix=f"{key_prefix}ratelimit",
                socket_timeout=REDIS_TIMEOUT_S,
                socket_connect_timeout=REDIS_TIMEOUT_S,
            )
        else:
            self.storage = MemoryStorage()
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)
        self.errors = 0
        self._last_logged = 0.0

    async def hit(self, category: str, *identifiers: str) -> float | None:
        """Count one request; None when allowed, else the seconds to wait (Retry-After)."""
        if not self.limits.enabled:
            return None
        for item in self.items.get(category, ()):
            try:
                if await self.strategy.hit(item, category, *identifiers):
                    continue
                stats = await self.strategy.get_window_stats(item, category, *identifiers)
            except Exception as exc:  # the storage is down: let the request through
                self._storage_failed(exc)
                return None
            return float(max(1, math.ceil(stats.reset_time - time.time())))
        return None

    async def blocked(self, category: str, *identifiers: str) -> float | None:
        """Like `hit` without counting: is this key already over its limit?"""
        if not self.limits.enabled:
            return None
        for item in self.items.get(category, ()):
            try:
                if await self.strategy.test(item, category, *identifiers):
                    continue
                stats = await self.strategy.get_window_stats(item, category, *identifiers)
            except Exception as exc:
                self._storage_failed(exc)
                return None
            return float(max(1, math.ceil(stats.reset_time - time.time())))
        return None

    def _storage_failed(self, exc: BaseException) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_logged > 60:
            self._last_logged = now
            log.error("rate limit storage failed, requests are let through: %s", exc)

    async def reset(self) -> None:
        """Forget every counter (tests)."""
        await self.storage.reset()

    async def close(self) -> None:
        close: Any = getattr(self.storage, "close", None)
        if close is not None:
            res = close()
            if hasattr(res, "__await__"):
                await res
