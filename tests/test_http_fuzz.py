"""Property-based tests of the HTTP port.

- schemathesis: every operation of the OpenAPI document (the JSON API, metrics, OTLP and the
  Loki routes), with generated parameters and bodies, a bounded number of examples each, sent
  over real loopback HTTP as an admin: no 5xx, every status documented, and every response
  matches its documented schema.
- Hypothesis on the push decoders: random and truncated protobuf, JSON, snappy and gzip bodies,
  to the OTLP decoder directly and to both push endpoints over HTTP: 4xx, never 5xx, and nothing
  stored from a body refused as a whole.

The server runs in a thread with its own event loop (these tests are synchronous, as schemathesis
and Hypothesis drive them); rate limits are off so examples are never answered 429.
"""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cramjam
import httpx2 as httpx
import pytest
import schemathesis
from http_server import backend_at, run_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from test_http_api import SECRET, bearer, push_body, run_lines, token
from test_otlp import RESOURCE, agent_run, request

from backend.http.app import HttpOptions, create_app
from backend.http.limits import RateLimits
from backend.http.otlp import decode_otlp
from backend.http.push_decode import PushBodyError, PushLimits

NS = 1_000_000_000
EXAMPLES = 8  # per operation: the whole document runs in well under a minute


class LiveServer:
    """The app on loopback, in a thread of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        be = await backend_at(self.data_dir, {"server.jwt_secret": SECRET})
        app = create_app(be, options=HttpOptions(rate_limits=RateLimits(enabled=False)))
        try:
            async with run_server(app) as srv, httpx.AsyncClient(base_url=srv.url) as c:
                t0 = time.time_ns() - 120 * NS
                entries = run_lines("fuzz-r1", "coder", t0, fail=True)
                r = await c.post("/loki/api/v1/push", json=push_body(entries), headers=self.headers)
                assert r.status_code == 204
                self.url = srv.url
                self._ready.set()
                await self._stop.wait()
        finally:
            await be.close()

    @property
    def headers(self) -> dict[str, str]:
        return bearer(token("admin", "fake"))

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30), "the server did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def stored(self) -> int:
        """Entries in the store (read straight from its SQLite file)."""
        with sqlite3.connect(self.data_dir / "logs.sqlite3") as conn:
            return int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path_factory.mktemp("fuzz"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_openapi_operations_never_fail_the_server(case: Any, live: LiveServer) -> None:
    response = case.call(base_url=live.url, headers=live.headers, timeout=30)
    case.validate_response(
        response,
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
    )


# ---------------------------------------------------------------- push decoders

VALID_OTLP = request(RESOURCE, agent_run("fuzz-otlp", 1_700_000_000 * NS))
CONTENT_TYPES = ["application/x-protobuf", "application/json"]


@st.composite
def otlp_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    kind = draw(st.sampled_from(["random", "truncated", "json", "gzip-random", "gzip-truncated"]))
    if kind == "random":
        body = draw(st.binary(max_size=400))
    elif kind == "truncated":
        body = VALID_OTLP[: draw(st.integers(0, len(VALID_OTLP)))]
    elif kind == "json":
        body = draw(st.text(max_size=200)).encode()
    elif kind == "gzip-random":
        body = gzip.compress(draw(st.binary(max_size=400)))
    else:
        gz = gzip.compress(VALID_OTLP)
        body = gz[: draw(st.integers(0, len(gz)))]
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    enc = "gzip" if kind.startswith("gzip") else draw(st.sampled_from(["", "identity"]))
    return body, ctype, enc


@given(otlp_bodies())
@settings(max_examples=300, deadline=None, database=None)
def test_otlp_decoder_only_raises_push_body_errors(case: tuple[bytes, str, str]) -> None:
    body, ctype, enc = case
    try:
        out = decode_otlp(body, ctype, enc, PushLimits(max_decoded_bytes=1 << 20))
    except PushBodyError as exc:
        assert 400 <= exc.status < 500
    else:
        assert out.total >= sum(len(s.entries) for s in out.streams)


@st.composite
def loki_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    valid = push_body(run_lines("fuzz-loki", "coder", 1_700_000_000 * NS, fail=False))
    import orjson

    raw = orjson.dumps(valid)
    kind = draw(
        st.sampled_from(
            ["random", "truncated-json", "snappy-random", "snappy-truncated", "gzip-truncated"]
        )
    )
    headers = {"Content-Type": "application/json"}
    if kind == "random":
        body = draw(st.binary(max_size=300))
        headers = {
            "Content-Type": draw(st.sampled_from(["application/json", "application/x-protobuf"]))
        }
    elif kind == "truncated-json":
        body = raw[: draw(st.integers(0, len(raw) - 1))]
    elif kind == "snappy-random":
        body = bytes(cramjam.snappy.compress_raw(draw(st.binary(max_size=300))))
        headers = {"Content-Type": "application/x-protobuf"}
    elif kind == "snappy-truncated":
        full = bytes(cramjam.snappy.compress_raw(draw(st.binary(min_size=1, max_size=300))))
        body = full[: draw(st.integers(0, len(full) - 1))]
        headers = {"Content-Type": "application/x-protobuf"}
    else:
        gz = gzip.compress(raw)
        body = gz[: draw(st.integers(0, len(gz) - 1))]
        headers["Content-Encoding"] = "gzip"
    return body, headers


@given(otlp_bodies())
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_otlp_endpoint_4xx_never_5xx_nothing_stored(
    live: LiveServer, case: tuple[bytes, str, str]
) -> None:
    body, ctype, enc = case
    before = live.stored()
    headers = {**live.headers, "Content-Type": ctype}
    if enc:
        headers["Content-Encoding"] = enc
    r = httpx.post(f"{live.url}/v1/logs", content=body, headers=headers, timeout=30)
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        assert live.stored() == before


@given(loki_bodies())
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_loki_push_4xx_never_5xx_nothing_stored(
    live: LiveServer, case: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = case
    before = live.stored()
    r = httpx.post(
        f"{live.url}/loki/api/v1/push",
        content=body,
        headers={**live.headers, **headers},
        timeout=30,
    )
    assert r.status_code < 500, r.text
    if r.status_code >= 400 and "total ignored" not in r.text:  # not a partial failure
        assert live.stored() == before
