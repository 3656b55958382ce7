"""What the two live-tail WebSockets share (`/api/logs/tail` and Loki's `/loki/api/v1/tail`):
the per-tenant tail slots, the session skeleton (its tasks, maximum duration, close codes), and
the cache that encodes a batch once for every socket that receives it.

The embedded store hands the same `TailBatch` object to every subscriber of one query
(backend/embedded/fanout.py); `FrameCache` keys encoded frames by that object, so 200 sockets on
one query cost one encoding per batch, not 200.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import AgentlogError
from ..models import TailBatch

if TYPE_CHECKING:
    from .app import AppContext

Frame = tuple[str, int]  # (the frame's JSON text, how many log lines it carries)


class FrameCache:
    """Encoded frames of the most recent batches, by (batch object, format).

    Holds a reference to each cached batch, so an `id()` cannot be reused while its entry
    lives; `size` only has to cover the batches in flight at once (a subscriber further behind
    costs one more encoding, nothing else), and is kept small: cached batches are live objects
    every full garbage collection walks."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, Hashable], tuple[TailBatch, list[Frame]]] = (
            OrderedDict()
        )

    def get(self, batch: TailBatch, fmt: Hashable, build: Callable[[], list[Frame]]) -> list[Frame]:
        key = (id(batch), fmt)
        hit = self._items.get(key)
        if hit is not None and hit[0] is batch:
            self._items.move_to_end(key)
            return hit[1]
        frames = build()
        self._items[key] = (batch, frames)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return frames


@contextlib.asynccontextmanager
async def tail_slot(
    ws: WebSocket, ctx: AppContext, tenant: str, route: str, over_limit: tuple[int, str]
) -> AsyncIterator[bool]:
    """Take one of the tenant's live-tail slots for an accepted socket: yields False (after
    closing with `over_limit`'s code and reason) when the tenant has `tail.max_per_tenant`."""
    count = ctx.active_tails.get(tenant, 0) + 1
    if count > ctx.tail.max_per_tenant:
        await close_quietly(ws, *over_limit)
        yield False
        return
    ctx.active_tails[tenant] = count
    ctx.metrics.tail_subscribers.labels(route).inc()
    try:
        yield True
    finally:
        ctx.metrics.tail_subscribers.labels(route).dec()
        left = ctx.active_tails.get(tenant, 1) - 1
        if left > 0:
            ctx.active_tails[tenant] = left
        else:
            ctx.active_tails.pop(tenant, None)


def close_reason(text: str) -> str:
    """A WebSocket close reason is at most 123 bytes of UTF-8."""
    return text.encode()[:123].decode("utf-8", "ignore")


async def close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):  # the peer may be gone already
        await ws.close(code=code, reason=close_reason(reason))


class TailSession:
    """One live-tail socket: `produce` (and any `workers`) run until the client leaves, the
    server stops (1001), the tail's maximum duration passes, or an error ends it (1011)."""

    route = ""  # the metrics label: "api" or "loki"
    max_duration_close: tuple[int, str] = (1000, "")

    def __init__(self, ws: WebSocket, ctx: AppContext) -> None:
        self.ws = ws
        self.ctx = ctx

    async def produce(self) -> None:
        raise NotImplementedError

    def workers(self) -> dict[str, Coroutine[Any, Any, None]]:
        """More coroutines to run beside `produce` (by task name)."""
        return {}

    async def send_frames(self, frames: list[Frame]) -> None:
        for text, lines in frames:
            await self.ws.send_text(text)
            if lines:
                self.ctx.metrics.tail_lines.labels(self.route).inc(lines)

    async def _watch_client(self) -> None:
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return

    async def run(self) -> None:
        coros: dict[str, Coroutine[Any, Any, Any]] = {
            "produce": self.produce(),
            **self.workers(),
            "watch": self._watch_client(),
            "stopping": self.ctx.stopping.wait(),
        }
        tasks = {asyncio.create_task(c, name=f"tail-{n}") for n, c in coros.items()}
        try:
            done, _ = await asyncio.wait(
                tasks, timeout=self.ctx.tail.max_duration_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if not done:
            await close_quietly(self.ws, *self.max_duration_close)
            return
        for t in done:
            name = t.get_name()
            if name == "tail-watch" or t.cancelled():
                continue
            if name == "tail-stopping":
                await close_quietly(self.ws, 1001, "the server is shutting down")
                return
            exc = t.exception()
            if exc is None or isinstance(exc, WebSocketDisconnect):
                continue
            text = str(exc) if isinstance(exc, AgentlogError) else "internal error while tailing"
            await close_quietly(self.ws, 1011, text)
            if not isinstance(exc, AgentlogError):
                raise exc
            return
        await close_quietly(self.ws, 1000, "")
