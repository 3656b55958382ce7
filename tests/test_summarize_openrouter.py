"""AI summaries through the facade, with the REAL openai client against a local fake server
(tests/fake_openai.py) that speaks the chat-completions protocol, SSE streaming included."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_openai import FakeOpenAI, Reply

from backend.cli import main as cli
from backend.config import SummarizerSettings, load_config
from backend.facade import Backend, SummaryChunk
from backend.models import LogEntry, Stream, Summary, Task
from backend.summarize.extractive import ExtractiveSummarizer
from backend.summarize.openrouter import (
    NO_KEY_MESSAGE,
    OpenRouterSummarizer,
    SummarizerError,
    Usage,
)

NS = 1_000_000_000
KEY = "sk-or-v1-" + "a1b2c3d4" * 8
RUN = "run-0001"

# secrets planted in the run's logs; none may reach the server
SECRETS = {
    "openai_key": "sk-proj-" + "Z9y8X7w6V5u4" * 3,
    "anthropic_key": "sk-ant-api03-" + "Qq1Ww2Ee3Rr4" * 3,
    "github_token": "ghp_" + "abcd1234" * 5,
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "google_api_key": "AIzaSyA-" + "1234567890abcdefghijklmnopqrstu",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFU",
    "url_password": "hunter2-db-pass",
    "email": "alice.oncall@example.com",
    "bearer_token": "tok_live_0123456789abcdefXYZ",
}


def jline(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def run_lines(run_id: str = RUN, repeats: int = 30, secret: bool = True) -> list[str]:
    """A failing run: start, steps, a looping tool call, repeated rate limits, one timeout."""
    common = {"run_id": run_id, "agent": "coder", "task": "fix the flaky test"}
    out = [jline(event="run.start", level="info", model="m/small", msg="starting", **common)]
    for step in range(1, 4):
        out.append(jline(event="step", level="info", step=step, msg="thinking", **common))
        out.append(
            jline(
                event="tool.call", level="info", step=step, tool="search", args={"q": "x"}, **common
            )
        )
    if secret:
        s = SECRETS
        out.append(
            jline(
                event="step",
                level="info",
                step=4,
                msg=(
                    f"env OPENAI_API_KEY={s['openai_key']} ANTHROPIC={s['anthropic_key']} "
                    f"gh {s['github_token']} aws {s['aws_access_key']} g {s['google_api_key']} "
                    f"jwt {s['jwt']} db postgresql://app:{s['url_password']}@db:5432/x "
                    f"mail {s['email']} Authorization: Bearer {s['bearer_token']}"
                ),
                **common,
            )
        )
    for i in range(repeats):
        out.append(
            jline(
                event="error",
                level="error",
                step=5,
                **{"error.type": "RateLimitError"},
                **{"error.message": f"rate limited by provider p: HTTP 429, retry after {i % 7}s"},
                **common,
            )
        )
    out.append(
        jline(
            event="error",
            level="error",
            step=6,
            **{"error.type": "TimeoutError", "error.message": "tool search timed out after 30s"},
            **common,
        )
    )
    out.append(jline(event="run.end", level="error", status="failed", msg="run failed", **common))
    return out


async def push_run(b: Backend, lines: list[str], run_id: str = RUN) -> None:
    start = time.time_ns() - 600 * NS
    entries = [LogEntry(start + i * NS // 10, ln, {"run_id": run_id}) for i, ln in enumerate(lines)]
    res = await b.push([Stream({"agent": "coder", "service_name": "t"}, entries)])
    assert res.accepted == len(lines)


def settings_for(tmp_path: Path, fake: FakeOpenAI, **extra: object) -> Any:
    overrides: dict[str, object] = {
        "data_dir": str(tmp_path),
        "summarizer.api_key": KEY,
        "summarizer.base_url": fake.base_url,
        "summarizer.app_url": "https://agentlog.example/",
        "summarizer.app_title": "agentlog-tests",
        "summarizer.timeout": "5s",
    }
    overrides.update({f"summarizer.{k}": v for k, v in extra.items()})
    return load_config(None, env={}, overrides=overrides).settings


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def backend(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[Backend]:
    b = await Backend.open(settings_for(tmp_path, fake))
    assert isinstance(b.summarizer, OpenRouterSummarizer)
    b.summarizer._sleep = no_sleep  # retries without waiting (delays are checked elsewhere)
    await push_run(b, run_lines())
    yield b
    await b.summarizer.aclose()
    await b.close()


async def collect(b: Backend, run_id: str = RUN, **kw: Any) -> tuple[list[str], Summary]:
    texts: list[str] = []
    last: Summary | None = None
    async for chunk in b.summarize(run_id, **kw):
        if chunk.text:
            texts.append(chunk.text)
        if chunk.summary is not None:
            last = chunk.summary
    assert last is not None
    return texts, last


# ---------------------------------------------------------------- happy path


async def test_streams_in_order_and_records_usage(backend: Backend, fake: FakeOpenAI) -> None:
    fake.reply(Reply(chunks=["Tried: ", "fixing a test. ", "Went wrong: ", "rate limits."]))
    texts, s = await collect(backend)
    assert texts == ["Tried: ", "fixing a test. ", "Went wrong: ", "rate limits."]
    assert s.text == "".join(texts)
    assert (s.model, s.offline, s.error) == ("anthropic/claude-3-haiku", False, "")
    assert (s.input_tokens, s.output_tokens, s.cost_usd) == (1200, 80, 0.00042)
    assert len(s.input_hash) == 64
    stored = await backend.tasks.get_summary(RUN, s.input_hash)
    assert stored is not None and stored.text == s.text and stored.cost_usd == s.cost_usd
    assert isinstance(backend.summarizer, OpenRouterSummarizer)
    assert backend.summarizer.last_usage == Usage(1200, 80, 0.00042)


async def test_request_shape_and_attribution_headers(backend: Backend, fake: FakeOpenAI) -> None:
    await backend.summary(RUN)
    [req] = fake.requests
    assert req.path == "/api/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["http-referer"] == "https://agentlog.example/"
    assert req.headers["x-title"] == "agentlog-tests"
    body = req.body
    assert body["model"] == "anthropic/claude-3-haiku"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["usage"] == {"include": True}  # OpenRouter usage accounting (cost)
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"]


async def test_prompt_is_redacted_and_has_the_facts(backend: Backend, fake: FakeOpenAI) -> None:
    await backend.summary(RUN)
    prompt = fake.requests[0].prompt
    raw = json.dumps(fake.requests[0].body)
    for kind, secret in SECRETS.items():
        assert secret not in raw, kind
        assert f"[REDACTED:{kind}]" in prompt, kind
    user = fake.requests[0].body["messages"][1]["content"]
    assert f"run id: {RUN}" in user and "status: failed" in user and "agent: coder" in user
    # the failure signals of the run (3 identical search calls: a loop; 30 429s: a retry storm)
    assert "loop: coder called search" in user
    assert "retry storm" in user
    # every distinct error, with its count; the repeated 429 line as a template with a count
    assert "[error, 30x]" in user and "tool search timed out after 30s" in user
    assert "30x L" in user


async def test_prompt_keeps_the_token_budget(tmp_path: Path, fake: FakeOpenAI) -> None:
    b = await Backend.open(settings_for(tmp_path, fake, max_input_tokens=500))
    try:
        lines = run_lines(repeats=2000)
        # many distinct noisy lines too, so the budget really bites
        lines[5:5] = [
            jline(event="step", level="info", run_id=RUN, msg=f"note {i} " * 9) for i in range(300)
        ]
        await push_run(b, lines)
        await b.summary(RUN)
        user = fake.requests[0].body["messages"][1]["content"]
        logs = user.split("<logs>\n", 1)[1].rsplit("\n</logs>", 1)[0]
        assert len(logs) <= 500 * 4
        assert "tool search timed out after 30s" in logs  # the rare error survived the cut
        assert '"run.end"' in logs and '"run.start"' in logs  # the last and first lines
        assert SECRETS["openai_key"] not in user
    finally:
        await b.close()


# ---------------------------------------------------------------- caching and single flight


async def test_second_request_replays_without_a_call(
    backend: Backend, fake: FakeOpenAI, tmp_path: Path
) -> None:
    _, first = await collect(backend)
    texts, again = await collect(backend)
    assert len(fake.requests) == 1
    assert again == first and texts == [first.text]
    # a fresh process (empty cache) replays from the task table, still without a request
    b2 = await Backend.open(settings_for(tmp_path, fake))
    try:
        third = await b2.summary(RUN)
        assert len(fake.requests) == 1 and third.text == first.text
        # refresh asks again
        await b2.summary(RUN, refresh=True)
        assert len(fake.requests) == 2
    finally:
        await b2.close()


async def test_other_model_or_changed_logs_ask_again(backend: Backend, fake: FakeOpenAI) -> None:
    await backend.summary(RUN)
    s2 = await backend.summary(RUN, model="openai/gpt-4o-mini")
    assert len(fake.requests) == 2 and s2.model == "openai/gpt-4o-mini"
    assert fake.requests[1].body["model"] == "openai/gpt-4o-mini"
    await backend.summary(RUN, model="openai/gpt-4o-mini")
    assert len(fake.requests) == 2
    await push_run(backend, [jline(event="step", level="info", msg="one more line")])
    await backend.summary(RUN)
    assert len(fake.requests) == 3


async def test_concurrent_requests_make_one_call(backend: Backend, fake: FakeOpenAI) -> None:
    fake.reply(Reply(chunks=["a", "b", "c", "d"], chunk_delay=0.05))

    async def reader() -> tuple[list[str], Summary]:
        return await collect(backend)

    (t1, s1), (t2, s2), (t3, s3) = await asyncio.gather(reader(), reader(), reader())
    assert len(fake.requests) == 1
    assert s1 == s2 == s3 and s1.text == "abcd"
    # every reader streamed the same chunks (a late joiner catches up, then follows live)
    assert t1 == t2 == t3 == ["a", "b", "c", "d"]


async def test_a_reader_that_leaves_does_not_cancel_the_summary(
    backend: Backend, fake: FakeOpenAI
) -> None:
    fake.reply(Reply(chunks=["a", "b", "c"], chunk_delay=0.05))
    gen = backend.summarize(RUN)
    assert isinstance(gen, AsyncGenerator)
    first = await gen.__anext__()
    assert first == SummaryChunk("a")
    await gen.aclose()  # the panel was closed
    for _ in range(100):
        if await backend.tasks.get_summary(RUN) is not None:
            break
        await asyncio.sleep(0.02)
    texts, s = await collect(backend)
    assert s.text == "abc" and texts == ["abc"] and len(fake.requests) == 1


# ---------------------------------------------------------------- failures and fallback

ERRORS = [
    (401, "OpenRouter rejected the API key (summarizer.api_key / OPENROUTER_API_KEY)", 1),
    (402, "no credit left on the OpenRouter account", 1),
    (404, "unknown model anthropic/claude-3-haiku (summarizer.model)", 1),
    (500, "OpenRouter answered HTTP 500 (a server-side error) (gave up after 3 tries)", 3),
    (503, "OpenRouter answered HTTP 503 (a server-side error) (gave up after 3 tries)", 3),
    (429, "OpenRouter is rate limiting requests (HTTP 429) (gave up after 3 tries)", 3),
]


@pytest.mark.parametrize(("status", "message", "calls"), ERRORS)
async def test_error_status_falls_back_to_extractive(
    backend: Backend, fake: FakeOpenAI, status: int, message: str, calls: int
) -> None:
    fake.default = Reply.error(status, "upstream says no")
    texts, s = await collect(backend)
    assert len(fake.requests) == calls
    assert texts[0] == f"AI summary failed: {message}.\n\n"
    assert (s.offline, s.model, s.error) == (True, "extractive", message)
    assert s.text.startswith("Offline summary (extractive, no AI)")
    assert s.text == "".join(texts[1:])
    # the fallback is stored (history) but not replayed: the next press tries the AI again
    fake.default = Reply()
    _, ok = await collect(backend)
    assert not ok.offline and len(fake.requests) == calls + 1


async def test_retry_on_429_honours_retry_after(backend: Backend, fake: FakeOpenAI) -> None:
    waits: list[float] = []

    async def record(d: float) -> None:
        waits.append(d)

    assert isinstance(backend.summarizer, OpenRouterSummarizer)
    backend.summarizer._sleep = record
    fake.reply(Reply.error(429, "slow down", **{"Retry-After": "3"}), Reply.error(502), Reply())
    _, s = await collect(backend)
    assert not s.offline and s.error == "" and len(fake.requests) == 3
    assert waits[0] >= 3.0  # Retry-After honoured
    assert 0.25 <= waits[1] <= 1.5  # 0.5 * 2 * [0.5, 1.5): exponential backoff with jitter


async def test_retry_after_too_long_gives_up_at_once(backend: Backend, fake: FakeOpenAI) -> None:
    fake.reply(Reply.error(429, "slow down", **{"Retry-After": "3600"}))
    _, s = await collect(backend)
    assert len(fake.requests) == 1
    assert s.error == "OpenRouter is rate limiting requests (HTTP 429) and asks to wait 3600s"


async def test_timeout_falls_back(tmp_path: Path, fake: FakeOpenAI) -> None:
    b = await Backend.open(settings_for(tmp_path, fake, timeout="400ms"))
    try:
        await push_run(b, run_lines())
        fake.reply(Reply(hang=True))
        t0 = time.perf_counter()
        texts, s = await collect(b)
        assert time.perf_counter() - t0 < 3
        assert s.error == "OpenRouter did not finish within 400ms (summarizer.timeout)"
        assert s.offline and texts[0].startswith("AI summary failed: OpenRouter did not finish")
        assert len(fake.requests) == 1  # a timeout is not retried
    finally:
        await b.close()


async def test_stream_that_stalls_after_text_is_cut_and_labelled(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    b = await Backend.open(settings_for(tmp_path, fake, timeout="500ms"))
    try:
        await push_run(b, run_lines())
        fake.reply(Reply(chunks=["partial ", "answer"], chunk_delay=5))
        texts, s = await collect(b)
        assert texts[0] == "partial "
        assert texts[1].startswith("\n\nAI summary failed: OpenRouter did not finish within 500ms")
        assert s.offline and len(fake.requests) == 1  # text was shown: never retried
    finally:
        await b.close()


async def test_unreachable_service(tmp_path: Path, fake: FakeOpenAI) -> None:
    port = fake.port
    fake.stop()
    b = await Backend.open(settings_for(tmp_path, fake, base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        assert isinstance(b.summarizer, OpenRouterSummarizer)
        b.summarizer._sleep = no_sleep
        await push_run(b, run_lines())
        _, s = await collect(b)
        assert s.error.startswith(f"cannot reach OpenRouter at http://127.0.0.1:{port}/v1")
        assert s.error.endswith("(gave up after 3 tries)") and s.offline
    finally:
        await b.close()


async def test_no_key(tmp_path: Path, fake: FakeOpenAI) -> None:
    # provider auto without a key: the extractive summarizer, no request, no error
    auto = load_config(None, env={}, overrides={"data_dir": str(tmp_path / "a")}).settings
    b = await Backend.open(auto)
    try:
        assert isinstance(b.summarizer, ExtractiveSummarizer)
        await push_run(b, run_lines())
        _, s = await collect(b)
        assert (s.offline, s.error) == (True, "")
    finally:
        await b.close()
    # provider openrouter without a key: the fallback says why
    forced = load_config(
        None,
        env={},
        overrides={
            "data_dir": str(tmp_path / "b"),
            "summarizer.provider": "openrouter",
            "summarizer.base_url": fake.base_url,
        },
    ).settings
    b = await Backend.open(forced)
    try:
        await push_run(b, run_lines())
        texts, s = await collect(b)
        assert s.error == NO_KEY_MESSAGE and s.offline
        assert texts[0].startswith(f"AI summary failed: {NO_KEY_MESSAGE}")
        assert fake.requests == []
    finally:
        await b.close()


# ---------------------------------------------------------------- the summarizer on its own


async def test_summarizer_port_and_usage_without_cost(fake: FakeOpenAI) -> None:
    s = OpenRouterSummarizer(SummarizerSettings(api_key=KEY, base_url=fake.base_url))
    fake.reply(Reply(chunks=["x", "y"], cost=None, prompt_tokens=7, completion_tokens=2))
    task = Task(run_id="r9", agent="a", task="t")
    out = [t async for t in s.summarize(task, ["hello me@example.org"])]
    assert out == ["x", "y"]
    assert s.last_usage == Usage(7, 2, None)
    assert "me@example.org" not in fake.requests[0].prompt
    # the empty answer is an error, not an empty summary
    fake.reply(Reply(chunks=[]))
    with pytest.raises(SummarizerError, match="returned an empty answer"):
        [t async for t in s.summarize(task, ["x"])]
    await s.aclose()


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    s = OpenRouterSummarizer(SummarizerSettings(api_key=KEY), jitter=lambda: 0.5)
    assert [s._backoff(n, None) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert s._backoff(1, 2.5) == 2.5
    low = OpenRouterSummarizer(SummarizerSettings(api_key=KEY), jitter=lambda: 0.0)
    assert low._backoff(2, None) == 0.5


@pytest.fixture
def cli_store(fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir holding one run, and an environment pointing the CLI at the fake server."""
    for name in list(os.environ):
        if name.startswith("AGENTLOG_") or name.startswith("OPENROUTER_"):
            monkeypatch.delenv(name)
    data = tmp_path / "data"

    async def seed() -> None:
        b = await Backend.open(
            load_config(None, env={}, overrides={"data_dir": str(data)}).settings
        )
        try:
            await push_run(b, run_lines())
        finally:
            await b.close()

    asyncio.run(seed())
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("AGENTLOG_SUMMARIZER__BASE_URL", fake.base_url)
    return data


def test_cli_summarize_streams_from_the_fake(
    capsys: pytest.CaptureFixture[str], fake: FakeOpenAI, cli_store: Path
) -> None:
    fake.reply(Reply(chunks=["The run ", "hit rate limits."], cost=0.0123))
    code = cli.main(["--data-dir", str(cli_store), "summarize", RUN])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.startswith("The run hit rate limits.")
    assert "$0.0123" in captured.err or "$0.0123" in captured.out
    assert len(fake.requests) == 1


def test_cli_summarize_model_flag_picks_the_model(
    capsys: pytest.CaptureFixture[str], fake: FakeOpenAI, cli_store: Path
) -> None:
    fake.reply(Reply(chunks=["ok"], cost=0.001))
    args = ["--data-dir", str(cli_store), "summarize", RUN, "--model", "openai/gpt-4o"]
    assert cli.main(args) == 0
    capsys.readouterr()
    assert [r.body["model"] for r in fake.requests] == ["openai/gpt-4o"]
