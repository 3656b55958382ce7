"""Transport-level protection and records of the HTTP port: ASGI middleware and the log files.

Middleware, outermost first (`install` adds them in this order):

1. `SecurityHeaders`: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
   `Referrer-Policy: no-referrer`, a `Content-Security-Policy` that allows nothing (the port serves
   data, never pages; so FastAPI's /docs pages, which load scripts from a CDN, are off and only
   `/openapi.json` is served), `Cross-Origin-Opener-Policy`, and `Cache-Control: no-store` unless
   the route set its own.
2. `RequestLog`: a request id (a sane incoming `X-Request-ID` is kept, else a new one; echoed in
   the response), the request duration histogram and in-flight gauge, one access-log record per
   request or WebSocket, an error-log record for every 5xx and every unhandled exception (which
   becomes a JSON 500 naming the request id, never a traceback on the wire).
3. CORS (Starlette's `CORSMiddleware`), only when `server.cors_origins` is set; no credentials
   (tokens travel in the Authorization header, which is allowed).
4. `BodyLimit`: 413 for a body over the limit, from `Content-Length` before anything is read, or
   while a body without one streams in. Push routes (Loki, OTLP) get the push limit
   (`server.push_body_limit`, 100 MiB as Loki); every other route `server.body_limit` (1 MiB).
   Compressed push bodies are also capped once decompressed (`server.push_decoded_limit`; the
   decompression-bomb guard lives in `push_decode.decode_content`, used by the Loki and OTLP
   push routes).
5. Starlette's `GZipMiddleware` (responses over 500 bytes, for clients that accept gzip; never
   Server-Sent Events).

Log files (`DailyLogs`), under `<data_dir>/logs/`, one JSON object per line, named by the UTC date
the record was written: `access-YYYY-MM-DD.log` (time, request id, who: `jwt:<subject>`,
`apikey:<key id>` or `anonymous`, tenant, client address, method, route *template*, status,
duration in ms, response bytes) and `error-YYYY-MM-DD.log` (the same keys plus the error and, for
an unhandled exception, its traceback). Never a token, a key, a query string or a body. Files are
created 0600 and written by one background thread, so a slow disk never stalls the event loop.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import HttpMetrics

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "PUSH_PATHS",
    "BodyLimit",
    "DailyLogs",
    "RequestLog",
    "SecurityHeaders",
    "install",
]

DEFAULT_BODY_LIMIT = 1024 * 1024
PUSH_PATHS = frozenset({"/loki/api/v1/push", "/api/prom/push", "/v1/logs", "/otlp/v1/logs"})
UNROUTED = "<unrouted>"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,64}")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


# ---------------------------------------------------------------- log files


class DailyLogs:
    """Append-only JSON-lines files, one per kind and UTC day, written off the event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._queue: queue.SimpleQueue[tuple[str, str, bytes] | threading.Event | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._files: dict[str, tuple[str, IO[bytes]]] = {}  # kind -> (date, file)
        self._closed = False
        self.write_errors = 0

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="agentlog-http-logs", daemon=True
                )
                self._thread.start()

    def write(self, kind: str, record: dict[str, Any]) -> None:
        """Queue one record for `<kind>-<UTC date>.log`."""
        if self._closed:
            return
        now = datetime.now(UTC)
        record = {"time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), **record}
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        self._queue.put((kind, now.strftime("%Y-%m-%d"), line))
        if self._thread is None:
            self._start()

    def access(self, record: dict[str, Any]) -> None:
        self.write("access", record)

    def error(self, record: dict[str, Any]) -> None:
        self.write("error", record)

    def _file(self, kind: str, day: str) -> IO[bytes]:
        cur = self._files.get(kind)
        if cur is not None and cur[0] == day:
            return cur[1]
        if cur is not None:
            with contextlib.suppress(OSError):
                cur[1].close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{kind}-{day}.log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        f = os.fdopen(fd, "ab")
        self._files[kind] = (day, f)
        return f

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:  # take what is queued, then flush once
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            touched: set[str] = set()
            markers: list[threading.Event] = []
            for it in batch:
                if it is None:
                    stop = True
                    continue
                if isinstance(it, threading.Event):
                    markers.append(it)
                    continue
                kind, day, line = it
                try:
                    self._file(kind, day).write(line)
                    touched.add(kind)
                except OSError:
                    self.write_errors += 1
            for kind in touched:
                with contextlib.suppress(OSError):
                    self._files[kind][1].flush()
            for m in markers:
                m.set()
            if stop:
                for _day, f in self._files.values():
                    with contextlib.suppress(OSError):
                        f.close()
                self._files.clear()
                return

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is written (tests); False on timeout."""
        if self._thread is None or self._closed:
            return True
        marker = threading.Event()
        self._queue.put(marker)
        return marker.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5.0)


# ---------------------------------------------------------------- middleware


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                if b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNROUTED


def _header(scope: Scope, name: bytes) -> str:
    for k, v in scope.get("headers", ()):
        if k == name:
            return str(v.decode("latin-1"))
    return ""


class RequestLog:
    """Request ids, the access and error logs, request metrics and the last-resort 500."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, logs: DailyLogs | None) -> None:
        self.app = app
        self.metrics = metrics
        self.logs = logs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        rid = incoming if _REQUEST_ID_OK.fullmatch(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 0
        sent = 0
        started = time.perf_counter()
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            t = message["type"]
            if t in ("http.response.start", "websocket.http.response.start"):
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), rid_header]}
            elif t == "websocket.accept":
                status = 101
                message = {**message, "headers": [*message.get("headers", []), rid_header]}
            elif t in ("http.response.body", "websocket.http.response.body"):
                sent += len(message.get("body", b""))
            elif t == "websocket.close" and status == 0:
                status = 403  # closed before the handshake: uvicorn answers 403
            await send(message)

        if kind == "http":
            self.metrics.in_flight.inc()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            error = exc
            if kind == "http" and status == 0:
                body = orjson.dumps({"detail": f"internal error (request id {rid})"})
                await send_wrapper(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send_wrapper({"type": "http.response.body", "body": body})
            elif kind == "http":
                raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route_of(scope)
            if kind == "http":
                self.metrics.in_flight.dec()
                self.metrics.observe_request(scope.get("method", ""), route, status or 500, elapsed)
            self._record(scope, rid, route, status, elapsed, sent, error)

    def _record(
        self,
        scope: Scope,
        rid: str,
        route: str,
        status: int,
        elapsed: float,
        sent: int,
        error: BaseException | None,
    ) -> None:
        if self.logs is None:
            return
        state = scope.get("state", {})
        ident = state.get("identity")
        client = scope.get("client")
        record: dict[str, Any] = {
            "request_id": rid,
            "who": getattr(ident, "who", "-"),
            "tenant": getattr(ident, "tenant", None),
            "client": client[0] if client else None,
            "method": scope.get("method", "WS") if scope["type"] == "http" else "WS",
            "route": route,
            "status": status or 500,
            "duration_ms": round(elapsed * 1000, 3),
            "bytes": sent,
        }
        self.logs.access(record)
        if error is not None:
            self.logs.error(
                {
                    **record,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": "".join(
                        traceback.format_exception(type(error), error, error.__traceback__)
                    ),
                }
            )
        elif status >= 500:
            self.logs.error({**record, "error": state.get("error", f"HTTP {status}")})


class BodyLimit:
    """413 for request bodies over the limit (see module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_bytes: int = DEFAULT_BODY_LIMIT,
        push_bytes: int = 100 * 1024 * 1024,
        push_paths: frozenset[str] = PUSH_PATHS,
    ) -> None:
        self.app = app
        self.default_bytes = default_bytes
        self.push_bytes = push_bytes
        self.push_paths = push_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.push_bytes if scope.get("path") in self.push_paths else self.default_bytes
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > limit:
            await _too_large(send, limit)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    from fastapi import HTTPException  # re-raised as is by FastAPI

                    raise HTTPException(413, _too_large_text(limit))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_text(limit: int) -> str:
    return f"request body too large: at most {limit} bytes"


async def _too_large(send: Send, limit: int) -> None:
    body = orjson.dumps({"detail": _too_large_text(limit)})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def install(
    app: Any,
    *,
    metrics: HttpMetrics,
    logs: DailyLogs | None,
    cors_origins: Sequence[str],
    body_limit: int = DEFAULT_BODY_LIMIT,
    push_limit: int = 100 * 1024 * 1024,
) -> None:
    """Add the middleware stack to a FastAPI/Starlette app (innermost first)."""
    app.add_middleware(GZipMiddleware, minimum_size=500)
    app.add_middleware(BodyLimit, default_bytes=body_limit, push_bytes=push_limit)
    if cors_origins:
        origins = ["*"] if "*" in cors_origins else list(cors_origins)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "X-Cache"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(RequestLog, metrics=metrics, logs=logs)
    app.add_middleware(SecurityHeaders)
