"""Shared fixtures.

Tests that need PostgreSQL or Redis use the `postgres_dsn` / `redis_url` fixtures: when the service
is missing they skip on a developer's machine but FAIL in CI (CI=true), so a broken service can
never turn into a silently green run.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from fake_openai import FakeOpenAI


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(service: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    msg = f"{service} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{msg}, and CI=true: tests that need it must run in CI")
    pytest.skip(msg)


@pytest.fixture
def postgres_dsn() -> str:
    dsn = os.environ.get("AGENTLOG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    _need("PostgreSQL", "127.0.0.1", 5432)
    return dsn


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("AGENTLOG_TEST_REDIS", "redis://127.0.0.1:6379/15")
    _need("Redis", "127.0.0.1", 6379)
    return url


@pytest.fixture(autouse=True)
def _isolated_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the developer's config or writes to their data directory."""
    base = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(base / "data"))
    monkeypatch.delenv("AGENTLOG_CONFIG", raising=False)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """A local OpenAI-compatible server standing in for OpenRouter (tests/fake_openai.py)."""
    with FakeOpenAI() as f:
        yield f
