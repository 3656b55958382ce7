"""`Backend.add_summary_listener`: told once per summary the facade makes or replays, whoever
asked and however many readers share it; a listener that raises does not break the summary; the
remover works. OpenRouter is the local stand-in server (tests/fake_openai.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI, Reply
from test_summarize_openrouter import RUN, push_run, run_lines, settings_for

from backend.facade import Backend
from backend.models import Summary


@pytest.fixture
async def backend(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[Backend]:
    b = await Backend.open(settings_for(tmp_path, fake))
    await push_run(b, run_lines(secret=False))
    yield b
    aclose = getattr(b.summarizer, "aclose", None)
    if aclose is not None:
        await aclose()
    await b.close()


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[Summary, bool]] = []

    def __call__(self, summary: Summary, *, replayed: bool) -> None:
        self.seen.append((summary, replayed))


async def test_told_once_per_summary_made_or_replayed(backend: Backend, fake: FakeOpenAI) -> None:
    fake.reply(Reply(chunks=["a", "b", "c"], chunk_delay=0.05))
    rec = Recorder()
    backend.add_summary_listener(rec)
    # three readers share one flight: one summary, told once
    s1, s2, s3 = await asyncio.gather(*(backend.summary(RUN) for _ in range(3)))
    assert s1 == s2 == s3 and len(fake.requests) == 1
    assert rec.seen == [(s1, False)]
    # a replay from the cache is told as such
    again = await backend.summary(RUN)
    assert again == s1 and rec.seen[1:] == [(s1, True)]
    # the AI failing: the extractive fallback is a new summary, with its error
    fake.reply(Reply.error(401, "bad key"))
    fallback = await backend.summary(RUN, refresh=True)
    assert fallback.error and rec.seen[2:] == [(fallback, False)]


async def test_a_raising_listener_does_not_break_the_summary(
    backend: Backend, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(summary: Summary, *, replayed: bool) -> None:
        raise RuntimeError("listener bug")

    after = Recorder()
    backend.add_summary_listener(broken)
    backend.add_summary_listener(after)
    with caplog.at_level(logging.ERROR, logger="backend.facade"):
        texts = [c.text async for c in backend.summarize(RUN) if c.text]
        s = await backend.summary(RUN)
    assert "".join(texts) == s.text and s.text and not s.error
    assert [r for _, r in after.seen] == [False, True]  # the next listener was still told
    assert await backend.tasks.get_summary(RUN, s.input_hash) == s  # stored all the same
    failures = [r for r in caplog.records if "summary listener failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None


async def test_the_remover_removes(backend: Backend, fake: FakeOpenAI) -> None:
    kept, gone = Recorder(), Recorder()
    backend.add_summary_listener(kept)
    remove = backend.add_summary_listener(gone)
    remove()
    remove()  # idempotent
    # the same callable added twice is two registrations, removed one at a time
    twice = Recorder()
    remove_a = backend.add_summary_listener(twice)
    backend.add_summary_listener(twice)
    remove_a()
    removed_itself: list[bool] = []

    def once(summary: Summary, *, replayed: bool) -> None:
        removed_itself.append(replayed)
        remove_once()  # removing itself while being told is allowed

    remove_once = backend.add_summary_listener(once)
    await backend.summary(RUN)
    await backend.summary(RUN)
    assert [r for _, r in kept.seen] == [False, True]
    assert gone.seen == []
    assert [r for _, r in twice.seen] == [False, True]
    assert removed_itself == [False]
