"""`--index-from-loki`: follow a source agents push to directly, keep the task table current,
resume after a restart without double counting."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from backend.cache import MemoryCache
from backend.config import load_config
from backend.embedded.logstore import EmbeddedLogStore
from backend.embedded.tasks import SqliteTaskStore
from backend.facade import Backend
from backend.follow import follow_and_index
from backend.models import LogEntry, Stream
from backend.summarize.extractive import ExtractiveSummarizer

NS = 1_000_000_000


class _Remote:
    """The embedded store seen as a remote source (the facade must not fold its pushes)."""

    def __init__(self, inner: EmbeddedLogStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def step(run: str, ts: int, i: int) -> LogEntry:
    return LogEntry(
        ts, f'{{"event":"step","run_id":"{run}","agent":"a","step":{i}}}', {"run_id": run}
    )


async def wait_for(cond: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_follow_catches_up_follows_and_resumes_exactly(tmp_path: Path) -> None:
    store = await EmbeddedLogStore.open(tmp_path / "remote.sqlite3")
    tasks = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    await tasks.open()
    settings = load_config(None, env={}, overrides={"data_dir": str(tmp_path)}).settings
    b = Backend(
        settings,
        logs=_Remote(store),  # type: ignore[arg-type]
        tasks=tasks,
        cache=MemoryCache(),
        summarizer=ExtractiveSummarizer(),
    )
    state = tmp_path / "follow-state.json"
    now = time.time_ns()
    sel = '{agent="a"}'
    try:
        # Three steps before the follower starts, two sharing one nanosecond.
        await store.push(
            [
                Stream(
                    {"agent": "a"}, [step("r1", now, 1), step("r1", now, 2), step("r1", now + 1, 3)]
                )
            ]
        )
        stop = asyncio.Event()
        runner = asyncio.create_task(follow_and_index(b, sel, state, start_ns=now - NS, stop=stop))

        async def steps(n: int) -> bool:
            t = await tasks.get("r1")
            return t is not None and t.step_count == n

        await wait_for(lambda: steps(3))
        await store.push([Stream({"agent": "a"}, [step("r1", now + 2, 4)])])  # live
        await wait_for(lambda: steps(4))
        stop.set()
        await asyncio.wait_for(runner, 5)

        # While it is stopped: one more line at the last folded nanosecond, one later.
        await store.push([Stream({"agent": "a"}, [step("r1", now + 2, 5), step("r1", now + 3, 6)])])
        stop2 = asyncio.Event()
        runner2 = asyncio.create_task(follow_and_index(b, sel, state, stop=stop2))
        await wait_for(lambda: steps(6))
        await asyncio.sleep(0.5)  # nothing is folded twice while it follows
        assert await steps(6)
        stop2.set()
        final = await asyncio.wait_for(runner2, 5)
        assert final.folded == 6
    finally:
        await tasks.close()
        await store.close()
