"""Redis as the shared second cache level, and the two-level cache (memory LRU in front of Redis).

`RedisCache` implements `ports.Cache` (level "redis") over redis.asyncio, and never lets a Redis
fault reach the caller:

- Every operation is bounded by `socket_timeout` (a hard deadline around the whole call, on top
  of redis-py's socket timeouts), so a hanging or slow server costs the caller at most that.
- A failed operation behaves like an absent cache: `get` -> None (a miss, and an error), `set`,
  `delete` -> nothing. Bugs in the caller (a str value, say) still raise.
- The first failure marks the source DOWN (with the reason and since when) and starts ONE
  background reconnect task: PING after 1 s, doubling to 30 s. While DOWN, operations do not
  touch the network at all (no pile-up of timeouts); the reconnect brings the state back by
  itself. A server that answers with an error (OOM, READONLY, ...) is DEGRADED, not down; so is one
  whose answers average (EWMA) over `slow_threshold`.

`TwoLevelCache` puts a `MemoryCache` in front: get = memory, else Redis (then the memory level is
filled with the key's remaining Redis TTL), else miss; set/delete go to both and publish an
invalidation on a pub/sub channel, so other instances drop the key from their memory level.
With Redis down it is a memory-only cache. Invalidations published while an instance was not
subscribed are lost, so on every RE-subscription the memory level is cleared (a few extra misses
instead of stale values). This is also how summaries are shared between engineers: one
instance's `set` is every other instance's Redis hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cache import MemoryCache
from .config import CacheSettings, RedisSettings, mask_url
from .errors import UsageError
from .models import CacheStats, HealthState, SourceHealth

__all__ = ["RedisCache", "TwoLevelCache", "mask_url", "open_cache"]

log = logging.getLogger(__name__)

# What a Redis fault looks like from here (builtin TimeoutError is asyncio's and socket's).
_FAULTS: Final = (RedisError, OSError, TimeoutError)


def _describe(exc: BaseException, timeout: float) -> str:
    """A Redis fault in plain words."""
    if isinstance(exc, TimeoutError | RedisTimeoutError):  # before OSError: TimeoutError is one
        return f"no answer within {timeout:g} s"
    if isinstance(exc, AuthenticationError):
        return f"authentication failed ({exc}); check the user and password in redis.url"
    if isinstance(exc, RedisConnectionError | OSError):
        text = str(exc)
        if "Connection lost" in text or "closed by server" in text:
            return "cannot reach Redis: connection lost"
        cause = _os_error(exc)
        if cause is not None:  # "connection refused" rather than redis-py's "Error 111 ..."
            return f"cannot reach Redis: {os.strerror(cause).lower()}"
        return f"cannot reach Redis: {exc}".rstrip(". ")
    if isinstance(exc, ResponseError):
        return f"Redis answered with an error: {exc}"
    return str(exc) or type(exc).__name__


def _os_error(exc: BaseException) -> int | None:
    """The errno of the OS error behind `exc` (redis-py wraps them), if any."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, OSError) and not isinstance(seen, TimeoutError) and seen.errno:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


class RedisCache:
    """`ports.Cache` over Redis; fault-tolerant (see the module docstring).

    - `url`: redis://, rediss:// or unix:// (the password is masked wherever it is shown).
    - `key_prefix`: put in front of every key (the API takes and returns unprefixed keys).
    - `default_ttl`: seconds, for `set` without a ttl; None = no expiry. `ttl=math.inf` on `set`
      means no expiry; `ttl <= 0` deletes the key (the value is already stale).
    - `socket_timeout`: the most any operation may block its caller, in seconds.
    - `connect_timeout`: TCP connect timeout (defaults to `socket_timeout`).
    - `slow_threshold`: average answer time (seconds) above which the state is DEGRADED.
    - `backoff_initial`, `backoff_max`: reconnect delays (doubling), in seconds.

    Stats: hits, misses and sets of this client. `size`, evictions and expirations are not
    known per prefix (Redis counts them per server), so they stay 0. `errors` counts operations
    that Redis did not serve (failed, or skipped while down).
    """

    level: Final = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "agentlog:",
        default_ttl: float | None = 300,
        socket_timeout: float = 1.0,
        connect_timeout: float | None = None,
        slow_threshold: float = 0.1,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        name: str = "cache",
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if socket_timeout <= 0:
            raise UsageError(f"redis socket_timeout must be positive, got {socket_timeout}")
        if default_ttl is not None and default_ttl <= 0:
            raise UsageError(f"redis default_ttl must be positive or None, got {default_ttl}")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise UsageError("redis reconnect backoff: need 0 < backoff_initial <= backoff_max")
        self.url = url
        self.detail = mask_url(url)
        self.key_prefix = key_prefix
        self.default_ttl = default_ttl
        self.timeout = socket_timeout
        self.slow_threshold = slow_threshold
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = name
        self._clock = clock
        try:
            self._client: aioredis.Redis = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout or socket_timeout,
                # One immediate retry on a broken connection (a pooled socket the server closed
                # while idle); none on timeouts: the deadline belongs to the caller.
                retry=Retry(NoBackoff(), 1, (RedisConnectionError,)),
                health_check_interval=0,
                client_name="agentlog",
            )
        except ValueError as exc:
            raise UsageError(f"redis.url {self.detail!r} is not a valid Redis URL: {exc}") from exc

        self._state = HealthState.OK
        self._reason = ""
        self._since = clock()
        self._latency_ms: float | None = None
        self._ewma_ms: float | None = None
        self._available = asyncio.Event()  # set while not DOWN
        self._available.set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self._hits = 0
        self._misses = 0
        self._sets = 0
        self.errors = 0
        self.reconnects = 0

    # ------------------------------------------------------------ ports.Cache

    async def get(self, key: str) -> bytes | None:
        k = self._key(key)
        ok, value = await self._run("get", lambda: self._client.get(k))
        if not ok or value is None:
            self._misses += 1
            return None
        self._hits += 1
        return bytes(value)

    async def get_with_ttl(self, key: str) -> tuple[bytes | None, float | None]:
        """The value and its remaining TTL in seconds (None: no expiry), in one round trip."""
        k = self._key(key)

        async def fetch() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(k)
            pipe.pttl(k)
            result: list[Any] = await pipe.execute()
            return result

        ok, result = await self._run("get", fetch)
        if not ok or result[0] is None:
            self._misses += 1
            return None, None
        self._hits += 1
        return bytes(result[0]), _pttl_seconds(result[1])

    async def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        *,
        publish: tuple[str, bytes] | None = None,
    ) -> None:
        """Store `value`; `publish=(channel, message)` also publishes, in the same round trip."""
        if ttl is None:
            ttl = self.default_ttl
        if ttl is not None and ttl <= 0:
            await self.delete(key, publish=publish)
            return
        k = self._key(key)
        px = None if ttl is None or math.isinf(ttl) else max(1, math.ceil(ttl * 1000))
        if publish is None:
            ok, _ = await self._run("set", lambda: self._client.set(k, value, px=px))
        else:
            channel, message = publish

            async def set_and_publish() -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                pipe.set(k, value, px=px)
                pipe.publish(channel, message)
                result: list[Any] = await pipe.execute()
                return result

            ok, _ = await self._run("set", set_and_publish)
        if ok:
            self._sets += 1

    async def delete(self, key: str, *, publish: tuple[str, bytes] | None = None) -> None:
        """Remove `key`; `publish=(channel, message)` also publishes, in the same round trip."""
        k = self._key(key)
        if publish is None:
            await self._run("delete", lambda: self._client.delete(k))
            return
        channel, message = publish

        async def delete_and_publish() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.delete(k)
            pipe.publish(channel, message)
            result: list[Any] = await pipe.execute()
            return result

        await self._run("delete", delete_and_publish)

    async def ttl(self, key: str) -> float | None:
        k = self._key(key)
        ok, pttl = await self._run("ttl", lambda: self._client.pttl(k))
        return _pttl_seconds(pttl) if ok else None

    async def stats(self) -> list[CacheStats]:
        return [self.stats_nowait()]

    def stats_nowait(self) -> CacheStats:
        return CacheStats(level=self.level, hits=self._hits, misses=self._misses, sets=self._sets)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._available.set()  # release anyone waiting for Redis to come back
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        with contextlib.suppress(*_FAULTS):
            async with asyncio.timeout(self.timeout):
                await self._client.aclose()

    # ------------------------------------------------------------ health and connection

    async def start(self) -> bool:
        """Contact Redis once (PING) so the state is known. Never raises; True when reachable."""
        ok, _ = await self._run("connect", self._client.ping, count=False)
        return ok

    async def health(self) -> SourceHealth:
        """The source's state; PINGs Redis unless it is already known to be down (then the
        reconnect task is the one probing)."""
        if self._state is not HealthState.DOWN and not self._closed:
            await self._run("ping", self._client.ping, count=False)
        down = self._state is HealthState.DOWN
        return SourceHealth(
            name=self.name,
            kind="redis",
            state=self._state,
            detail=self.detail,
            reason=self._reason,
            since=self._since,
            latency_ms=None if down else self._latency_ms,
        )

    @property
    def state(self) -> HealthState:
        return self._state

    @property
    def available(self) -> bool:
        """Not known to be down (operations go to Redis)."""
        return self._state is not HealthState.DOWN and not self._closed

    async def wait_available(self) -> None:
        """Return once the state is not DOWN (or the cache is closed)."""
        while not self._available.is_set():
            await self._available.wait()

    def pubsub(self) -> PubSub:
        """A new pub/sub object on this client's pool (the caller closes it)."""
        return self._client.pubsub()

    @property
    def client(self) -> aioredis.Redis:
        """The redis.asyncio client (for benchmarks and tests; bypasses fault handling)."""
        return self._client

    # ------------------------------------------------------------ internals

    def _key(self, key: str) -> str:
        return self.key_prefix + key

    async def _run(
        self, op: str, call: Callable[[], Awaitable[Any]], *, count: bool = True
    ) -> tuple[bool, Any]:
        """Run one Redis call under the deadline. Returns (True, result) or (False, None)."""
        if self._closed or self._state is HealthState.DOWN:
            if count:
                self.errors += 1
            if not self._closed:
                self._ensure_reconnect()
            return False, None
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                result = await call()
        except ResponseError as exc:  # reachable, but refusing (OOM, READONLY, ...)
            if count:
                self.errors += 1
            self._set_state(HealthState.DEGRADED, f"{op}: {_describe(exc, self.timeout)}")
            return False, None
        except _FAULTS as exc:
            if count:
                self.errors += 1
            self._went_down(f"{op}: {_describe(exc, self.timeout)}")
            return False, None
        self._observe(time.perf_counter() - t0)
        return True, result

    def _observe(self, seconds: float) -> None:
        """A successful answer: update the latency average and the state."""
        ms = seconds * 1000
        self._latency_ms = ms
        self._ewma_ms = ms if self._ewma_ms is None else 0.7 * self._ewma_ms + 0.3 * ms
        limit = self.slow_threshold * 1000
        if self._ewma_ms > limit:
            self._set_state(
                HealthState.DEGRADED,
                f"slow: answers take {self._ewma_ms:.0f} ms on average (limit {limit:.0f} ms)",
            )
        else:
            self._set_state(HealthState.OK, "")

    def _set_state(self, state: HealthState, reason: str) -> None:
        if state is not self._state:
            was = self._state
            self._state = state
            self._since = self._clock()
            if state is HealthState.DOWN:
                self._available.clear()
                log.warning("redis %s is down: %s", self.detail, reason)
            else:
                self._available.set()
                if was is HealthState.DOWN:
                    self.reconnects += 1
                    self._ewma_ms = None
                log.info("redis %s is %s %s", self.detail, state.value, reason)
        self._reason = reason

    def _went_down(self, reason: str) -> None:
        if self._state is not HealthState.DOWN:
            self._set_state(HealthState.DOWN, reason)
        self._ensure_reconnect()

    def _ensure_reconnect(self) -> None:
        """Start the reconnect task unless one is running (never two attempts in flight)."""
        if self._closed or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        self._reconnect_task = asyncio.get_running_loop().create_task(
            self._reconnect(), name=f"redis-reconnect {self.detail}"
        )

    async def _reconnect(self) -> None:
        delay = self.backoff_initial
        attempt = 0
        first_reason = self._reason
        while not self._closed and self._state is HealthState.DOWN:
            await asyncio.sleep(delay)
            if self._closed or self._state is not HealthState.DOWN:
                return
            attempt += 1
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout):
                    # Idle pooled sockets may be dead or hung: start afresh.
                    await self._client.connection_pool.disconnect(inuse_connections=False)
                    t0 = time.perf_counter()
                    await self._client.ping()
            except _FAULTS as exc:
                delay = min(delay * 2, self.backoff_max)
                now = _describe(exc, self.timeout)
                head = first_reason if now in first_reason else f"{first_reason}; now {now}"
                tries = "attempt" if attempt == 1 else "attempts"
                self._reason = f"{head} ({attempt} reconnect {tries} failed, next in {delay:g} s)"
                continue
            self._observe(time.perf_counter() - t0)


def _pttl_seconds(pttl: Any) -> float | None:
    """PTTL's answer in seconds: None for an absent key (-2) or one without expiry (-1)."""
    if pttl is None or int(pttl) < 0:
        return None
    return int(pttl) / 1000


class TwoLevelCache:
    """`ports.Cache`: a `MemoryCache` in front of a `RedisCache`, kept coherent across instances
    by invalidations published on `channel` (see the module docstring).

    `await start()` contacts Redis and starts the subscriber (which resubscribes by itself after
    Redis comes back); `close()` stops it and closes both levels. Without `start()` it still
    works, but other instances' deletes do not reach this one's memory level.

    `publish_sets`: a `set` also invalidates other instances' memory copies (an overwrite makes
    them stale); off, only `delete` does. `ping_interval`: how often an idle subscription is
    checked with PING (a hung connection otherwise looks like a quiet channel).
    """

    def __init__(
        self,
        memory: MemoryCache,
        redis: RedisCache,
        *,
        channel: str = "agentlog:invalidate",
        publish_sets: bool = True,
        ping_interval: float = 5.0,
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.channel = channel
        self.publish_sets = publish_sets
        self.ping_interval = ping_interval
        self.instance_id = uuid.uuid4().hex[:16]
        self.invalidations = 0  # invalidation messages from other instances applied
        self.resubscribes = 0
        self._origin = self.instance_id.encode() + b"\n"
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._sub_error = ""
        # Keys with a Redis read in flight -> (reads in flight, invalidation version): a read
        # that an invalidation overtook must not put its (old) value into the memory level.
        self._reading: dict[str, list[int]] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Contact Redis and subscribe to the invalidation channel. Never raises; waits at most
        about one Redis timeout for the first subscription."""
        if self._subscriber is not None:
            return
        reachable = await self.redis.start()
        self._subscriber = asyncio.get_running_loop().create_task(
            self._subscribe_loop(), name=f"cache-invalidations {self.channel}"
        )
        if reachable:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.redis.timeout * 2):
                    await self.wait_subscribed()

    async def wait_subscribed(self) -> None:
        """Wait until the invalidation subscription is live (bound it with asyncio.timeout)."""
        await self._subscribed.wait()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    async def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._subscriber
            self._subscriber = None
        self._subscribed.clear()
        await self.memory.close()
        await self.redis.close()

    # ------------------------------------------------------------ ports.Cache

    async def get(self, key: str) -> bytes | None:
        value = self.memory.get_nowait(key)
        if value is not None:
            return value
        slot = self._reading.get(key)
        if slot is None:
            slot = self._reading[key] = [0, 0]
        slot[0] += 1
        version = slot[1]
        try:
            value, ttl = await self.redis.get_with_ttl(key)
        finally:
            slot[0] -= 1
            if slot[0] == 0 and self._reading.get(key) is slot:
                del self._reading[key]
        if value is not None and slot[1] == version:
            # fill with the remaining TTL (None: no expiry in Redis -> the memory default)
            self.memory.set_nowait(key, value, ttl)
        return value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._invalidate_local(key)
        self.memory.set_nowait(key, value, ttl)
        publish = (self.channel, self._origin + key.encode()) if self.publish_sets else None
        await self.redis.set(key, value, ttl, publish=publish)

    async def delete(self, key: str) -> None:
        self._invalidate_local(key)
        await self.redis.delete(key, publish=(self.channel, self._origin + key.encode()))

    async def ttl(self, key: str) -> float | None:
        left = self.memory.ttl_nowait(key)
        if left is not None:
            return left
        return await self.redis.ttl(key)

    async def stats(self) -> list[CacheStats]:
        return [self.memory.stats_nowait(), self.redis.stats_nowait()]

    async def health(self) -> SourceHealth:
        """Redis's health; while Redis is up but the invalidation subscription is not, DEGRADED."""
        h = await self.redis.health()
        if h.state is HealthState.DOWN:
            h.reason = f"{h.reason} (serving from the in-process cache only)"
        elif self._subscriber is not None and not self.subscribed and self._sub_error:
            h.state = HealthState.DEGRADED
            h.reason = f"invalidation channel {self.channel!r} not subscribed: {self._sub_error}"
        return h

    # ------------------------------------------------------------ invalidation

    def _invalidate_local(self, key: str) -> None:
        self.memory.delete_nowait(key)
        slot = self._reading.get(key)
        if slot is not None:
            slot[1] += 1

    def _invalidate_all(self) -> None:
        self.memory.clear()
        for slot in self._reading.values():
            slot[1] += 1

    def _on_message(self, data: bytes) -> None:
        origin, sep, key = bytes(data).partition(b"\n")
        if not sep or origin + b"\n" == self._origin:
            return  # malformed, or our own
        try:
            self._invalidate_local(key.decode())
        except UnicodeDecodeError:
            return
        self.invalidations += 1

    async def _subscribe_loop(self) -> None:
        delay = self.redis.backoff_initial
        first = True
        while True:
            await self.redis.wait_available()
            pubsub = self.redis.pubsub()
            try:
                await self._subscribe(pubsub)
                if not first or len(self.memory):
                    # Invalidations sent while we were not listening are lost (and anything cached
                    # before the first subscription, e.g. memory-only while Redis was down at
                    # start, may have been deleted elsewhere): drop the memory level.
                    self._invalidate_all()
                self.resubscribes += 0 if first else 1
                first = False
                self._sub_error = ""
                self._subscribed.set()
                delay = self.redis.backoff_initial
                await self._listen(pubsub)
            except _FAULTS as exc:
                self._sub_error = _describe(exc, self.redis.timeout)
                log.info("cache invalidation channel %s lost: %s", self.channel, self._sub_error)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(*_FAULTS):
                    async with asyncio.timeout(self.redis.timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.redis.backoff_max)

    async def _subscribe(self, pubsub: PubSub) -> None:
        async with asyncio.timeout(self.redis.timeout):
            await pubsub.subscribe(self.channel)
            while True:  # wait for the confirmation: from then on, no message is missed
                msg = await pubsub.get_message(timeout=self.redis.timeout)
                if msg is not None and msg["type"] == "subscribe":
                    return

    async def _listen(self, pubsub: PubSub) -> None:
        """Apply invalidations until the connection fails (raises). An idle connection is PINGed
        every `ping_interval`; no answer within the Redis timeout counts as a failure."""
        loop = asyncio.get_running_loop()
        timeout = self.redis.timeout
        poll = min(1.0, self.ping_interval, timeout)
        last_rx = loop.time()
        ping_sent: float | None = None
        while True:
            msg = await pubsub.get_message(timeout=poll)
            now = loop.time()
            if msg is not None:
                last_rx, ping_sent = now, None
                if msg["type"] == "message":
                    self._on_message(msg["data"])
                elif msg["type"] == "subscribe":
                    # redis-py reconnected and resubscribed by itself: same gap, same remedy
                    self._invalidate_all()
                    self.resubscribes += 1
                continue
            if ping_sent is not None:
                if now - ping_sent > timeout:
                    raise TimeoutError(f"no PONG on the invalidation channel within {timeout:g} s")
            elif now - last_rx >= self.ping_interval:
                async with asyncio.timeout(timeout):
                    await pubsub.ping()
                ping_sent = now


async def open_cache(cache: CacheSettings, redis: RedisSettings) -> MemoryCache | TwoLevelCache:
    """The cache the settings ask for: the memory LRU alone, or (`redis.enabled`) in front of
    Redis, started. Never raises for an unreachable Redis (it starts memory-only and reconnects);
    an invalid URL is a `UsageError`."""
    memory = MemoryCache(
        max_entries=cache.memory_max_entries,
        max_bytes=cache.memory_max_bytes,
        default_ttl=cache.memory_ttl,
    )
    if not redis.enabled:
        return memory
    two = TwoLevelCache(
        memory,
        RedisCache(redis.url, key_prefix=redis.key_prefix, default_ttl=redis.default_ttl),
        channel=f"{redis.key_prefix}invalidate",
    )
    await two.start()
    return two
