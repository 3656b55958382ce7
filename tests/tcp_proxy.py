"""A TCP proxy for fault tests: put it between a client and a real server and make it misbehave.

    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()                  # listens on 127.0.0.1:<proxy.port>
    ... point the client at proxy.port ...
    proxy.mode = "hang"                  # takes effect at once, for new and open connections
    proxy.mode = "pass"
    await proxy.close()

or `async with TcpProxy(host, port) as proxy: ...`. Nothing here knows the protocol, so the same
helper serves Redis, PostgreSQL, Loki (HTTP) and WebSocket tests.

Modes (what the server behind the proxy seems to do):

- "pass":   forward bytes both ways untouched.
- "refuse": nothing listens: new connections get ECONNREFUSED; open connections are reset.
            Back to another mode, the proxy listens again on the same port.
- "cut":    open connections are reset now; new connections are accepted and reset at once
            (a server dropping every session).
- "hang":   new connections are accepted and never answered; open connections stop moving bytes
            (like a SIGSTOPped server: data is held, not lost, and flows again when the mode
            changes back, so a client that is still waiting gets its late answer).
- "slow":   every chunk from the server to the client is delivered `delay` seconds after it
            arrived (pure added latency per answer, not a bandwidth cap; the client's bytes go
            through untouched). `delay` can be changed at any time.

Setting `mode` is synchronous and safe from the event loop's thread; use `await set_mode(...)`
when the next statement must see the new listener (after "refuse") or closed connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal, get_args

__all__ = ["Mode", "TcpProxy"]

Mode = Literal["pass", "refuse", "cut", "hang", "slow"]
_MODES: frozenset[str] = frozenset(get_args(Mode))
_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 64  # per direction: read-ahead held while hanging or delaying (backpressure)


class _Link:
    """One client connection and (once opened) its upstream connection."""

    __slots__ = ("client", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter, task: asyncio.Task[None] | None) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task = task

    def reset(self) -> None:
        """Drop both sides abruptly (RST where the OS allows it)."""
        for w in (self.client, self.upstream):
            if w is not None:
                _abort(w)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # linger 0: close() sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class TcpProxy:
    """An asyncio TCP proxy to `target_host:target_port` with switchable faults (see module)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: Mode = "pass",
        delay: float = 0.2,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port  # the real port once started (0 asks the OS for a free one)
        self.delay = delay
        self.accepted = 0  # connections accepted so far
        self._mode: Mode = "pass"
        self._changed = asyncio.Event()  # set and replaced on every mode change
        self._server: asyncio.Server | None = None
        self._listening: asyncio.Task[None] | None = None
        self._links: set[_Link] = set()
        self._started = False
        self._closed = False
        self.mode = mode

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> TcpProxy:
        if self._started:
            return self
        self._started = True
        if self._mode != "refuse":
            await self._listen()
        elif not self.port:  # reserve a port so the client knows where to (fail to) connect
            with socket.socket() as s:
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        return self

    async def close(self) -> None:
        self._closed = True
        self._stop_listening()
        if self._listening is not None:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await self._listening
        self._reset_all()
        self._notify()
        await asyncio.sleep(0)  # let the cancelled connection tasks finish

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ faults

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        if mode not in _MODES:
            raise ValueError(f"unknown proxy mode {mode!r}; expected one of {sorted(_MODES)}")
        old, self._mode = self._mode, mode
        if mode in ("refuse", "cut"):
            self._reset_all()
        if mode == "refuse":
            self._stop_listening()
        elif old == "refuse" and self._started and not self._closed and self._server is None:
            self._listening = asyncio.get_running_loop().create_task(self._listen())
        self._notify()

    async def set_mode(self, mode: Mode, delay: float | None = None) -> None:
        """Set the mode (and delay) and wait until it is in force (listening again, resets
        delivered)."""
        if delay is not None:
            self.delay = delay
        self.mode = mode
        if self._listening is not None:
            await self._listening
        await asyncio.sleep(0)

    def cut_all(self) -> int:
        """Reset every open connection now, whatever the mode. Returns how many there were."""
        n = len(self._links)
        self._reset_all()
        return n

    @property
    def active(self) -> int:
        """Connections open through the proxy right now."""
        return len(self._links)

    # ------------------------------------------------------------ internals

    def _notify(self) -> None:
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    def _reset_all(self) -> None:
        for link in list(self._links):
            link.reset()
        self._links.clear()

    def _stop_listening(self) -> None:
        if self._listening is not None and not self._listening.done():
            self._listening.cancel()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind after "refuse"
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
            self.port = sock.getsockname()[1]
            self._server = await asyncio.start_server(self._on_client, sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _wait_while(self, *modes: str) -> None:
        while self._mode in modes:
            await self._changed.wait()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer, asyncio.current_task())
        if self._mode in ("cut", "refuse") or self._closed:
            _abort(writer)
            return
        self._links.add(link)
        try:
            await self._wait_while("hang")  # accepted, never answered
            if self._mode in ("cut", "refuse") or self._closed:
                return
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
            link.upstream = up_writer
            if link not in self._links:  # reset while connecting
                _abort(up_writer)
                return
            to_server = asyncio.create_task(self._pump(reader, up_writer, slow=False))
            to_client = asyncio.create_task(self._pump(up_reader, writer, slow=True))
            try:
                await asyncio.gather(to_server, to_client)
            finally:
                to_server.cancel()
                to_client.cancel()
                await asyncio.gather(to_server, to_client, return_exceptions=True)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the target refused or a side went away: drop the client as a server would
        except asyncio.CancelledError:
            pass  # reset by a mode change or close()
        finally:
            self._links.discard(link)
            for w in (link.upstream, writer):
                if w is not None and not w.transport.is_closing():
                    w.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, slow: bool
    ) -> None:
        """Copy src to dst through a bounded queue; a reader and a writer, so that a held or
        delayed chunk does not delay reading (and timestamping) the next one."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

        async def read() -> None:
            while True:
                data = await src.read(_CHUNK)
                await queue.put((loop.time(), data))
                if not data:
                    return

        async def write() -> None:
            while True:
                arrived, data = await queue.get()
                while True:
                    await self._wait_while("hang")
                    if not (slow and self._mode == "slow"):
                        break
                    left = arrived + self.delay - loop.time()
                    if left <= 0:
                        break
                    changed = self._changed
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await changed.wait()  # re-check early if the mode changes
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()  # half-close, as the sender did
                    return
                dst.write(data)
                await dst.drain()

        reader = asyncio.create_task(read())
        try:
            await write()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader
