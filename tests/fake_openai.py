"""A local fake of the OpenAI / OpenRouter chat-completions API, for tests and benches.

A real HTTP/1.1 server (`http.server` in a thread) on 127.0.0.1 and a random port, so the real
openai client talks to it over a socket:

    with FakeOpenAI() as fake:
        fake.reply(Reply(chunks=["Hello", " world"]))        # queue answers, in order
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k")
        ...
        fake.requests[0].body["messages"], fake.requests[0].headers["x-title"]

`POST .../chat/completions` answers with the next queued `Reply`, or with `default` when the
queue is empty. A streaming request (``"stream": true``) gets Server-Sent Events: an OpenRouter
``: OPENROUTER PROCESSING`` comment, one ``data: {chunk}`` per text piece, a chunk with
``finish_reason: "stop"``, a final usage chunk (``prompt_tokens``, ``completion_tokens``,
``total_tokens``, ``cost``) when the request asked for ``stream_options.include_usage``, then
``data: [DONE]`` (chunked transfer encoding). A non-streaming request gets one JSON completion.

A reply can be an error status with OpenRouter's error body ``{"error": {"code", "message"}}``
and extra headers (``Retry-After``), wait `delay` seconds before answering, wait `chunk_delay`
between chunks, or `hang` (answer nothing until the server stops). Every request is recorded
(`requests`: method, path, lower-cased headers, parsed body, arrival time) and every finished
streaming answer records how long the server itself took to its first chunk (`server_delays`).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    chunks: Sequence[str] = ("The run ", "failed: ", "tool timeout.")
    prompt_tokens: int = 1200
    completion_tokens: int = 80
    cost: float | None = 0.00042
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""  # error message, for status >= 400
    delay: float = 0.0  # seconds before the status line
    chunk_delay: float = 0.0  # seconds between chunks
    hang: bool = False  # never answer (until the server stops)
    model: str = ""  # model named in the chunks; default: the requested one

    @classmethod
    def error(cls, status: int, message: str = "", **headers: str) -> Reply:
        return cls(status=status, message=message or f"error {status}", headers=dict(headers))


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float  # time.perf_counter() on arrival

    @property
    def prompt(self) -> str:
        """All message contents, joined."""
        return "\n".join(str(m.get("content", "")) for m in self.body.get("messages", []))


class FakeOpenAI:
    """See the module docstring."""

    def __init__(self, default: Reply | None = None) -> None:
        self.default = default or Reply()
        self.requests: list[Request] = []
        self.server_delays: list[float] = []  # arrival -> first chunk written, per stream
        self._queue: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the fake first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def reply(self, *replies: Reply) -> None:
        """Queue answers for the next requests, in order."""
        with self._lock:
            self._queue.extend(replies)

    def replies(self, replies: Iterable[Reply]) -> None:
        self.reply(*replies)

    def _next(self) -> Reply:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        server = self._server
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.02), name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as real servers do: no 40 ms delayed-ACK stall per write

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        arrived = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        owner = self.owner
        with owner._lock:
            owner.requests.append(
                Request(
                    "POST",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    arrived,
                )
            )
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"code": 404, "message": f"no route {self.path}"}})
            return
        reply = owner._next()
        if reply.hang:
            owner._stop.wait(timeout=120)
            self.close_connection = True
            return
        if reply.delay and owner._stop.wait(timeout=reply.delay):
            return
        if reply.status >= 400:
            payload = {"error": {"code": reply.status, "message": reply.message}}
            self._json(reply.status, payload, reply.headers)
            return
        model = reply.model or str(body.get("model", ""))
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(reply, model, usage, arrived)
        else:
            self._complete(reply, model)

    # ------------------------------------------------------------ answers

    def _json(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _usage(self, reply: Reply) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
        if reply.cost is not None:
            usage["cost"] = reply.cost
        return usage

    def _complete(self, reply: Reply, model: str) -> None:
        self._json(
            200,
            {
                "id": "gen-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(reply.chunks)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": self._usage(reply),
            },
            reply.headers,
        )

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, reply: Reply, model: str, usage: bool, arrived: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        created = int(time.time())

        def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": "gen-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            obj.update(extra or {})
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        stop = self.owner._stop
        try:
            self._write_chunk(b": OPENROUTER PROCESSING\n\n")
            for i, text in enumerate(reply.chunks):
                if i and reply.chunk_delay and stop.wait(timeout=reply.chunk_delay):
                    return
                delta: dict[str, Any] = {"content": text}
                if i == 0:
                    delta["role"] = "assistant"
                    with self.owner._lock:
                        self.owner.server_delays.append(time.perf_counter() - arrived)
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                self._write_chunk(event([choice]))
            self._write_chunk(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            if usage:
                self._write_chunk(event([], {"usage": self._usage(reply)}))
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
