"""The offline extractive summarizer."""

from __future__ import annotations

from typing import Any

import orjson

from backend.models import RunStatus, Task
from backend.ports import Summarizer
from backend.summarize import ExtractiveSummarizer
from backend.summarize.extractive import mask_message


def j(**fields: Any) -> str:
    """A JSON log line; keyword `error_type` etc. become dotted `error.type` keys."""
    return orjson.dumps({k.replace("error_", "error."): v for k, v in fields.items()}).decode()


def ts(sec: int) -> str:
    return f"2024-05-01T03:00:{sec:02d}.000000Z"


async def summary(task: Task, lines: list[str], **kw: Any) -> tuple[list[str], str]:
    summarizer: Summarizer = ExtractiveSummarizer(**kw)
    chunks = [c async for c in summarizer.summarize(task, lines)]
    return chunks, "".join(chunks)


def failing_run() -> list[str]:
    lines = [
        j(ts=ts(0), level="info", event="run.start", agent="support", task="triage ticket #4821"),
    ]
    for step in range(1, 9):
        lines.append(j(ts=ts(step * 2), level="info", event="step", step=step, msg=f"think {step}"))
        lines.append(
            j(
                ts=ts(step * 2 + 1),
                level="info",
                event="llm.call",
                step=step,
                model="openai/gpt-4o-mini",
                input_tokens=1000,
                output_tokens=100,
                cost_usd=0.001,
            )
        )
    for i in range(4):  # the same call, same args (keys in another order): a loop
        args = {"q": "refund policy", "k": 5} if i % 2 else {"k": 5, "q": "refund policy"}
        lines.append(j(ts=ts(30 + i), event="tool.call", step=9, tool="search_kb", args=args))
    lines += [
        j(ts=ts(40), level="error", event="error", error_type="TimeoutError",
          error_message="tool search_kb timed out after 30s"),
        j(ts=ts(41), level="error", event="error", error_type="TimeoutError",
          error_message="tool search_kb timed out after 31s"),
        j(ts=ts(42), level="error", event="error", error_type="KeyError",
          error_message="KeyError: 'customer_id'",
          error_stack='Traceback (most recent call last):\n  File "/app/a.py", line 3, in run\n'
          "    x['customer_id']\nKeyError: 'customer_id'"),
        "not json {{{ \x1b[31mgarbage\x1b[0m [bold]markup[/bold]",
        "ts=2024-05-01T03:00:43Z level=error msg=\"upstream reset\" run_id=run-1",
        j(ts=ts(44), level="error", event="run.end", status="failed", duration_ms=44000,
          msg="run failed"),
    ]  # fmt: skip
    return lines


async def test_offline_label_facts_and_sections() -> None:
    task = Task(run_id="run-abc", agent="support", status=RunStatus.FAILED)
    chunks, text = await summary(task, failing_run())
    lines = text.splitlines()
    assert len(chunks) >= 4  # streamed in pieces
    assert lines[0].startswith("Offline summary (extractive, no AI): support run run-abc failed")
    assert "44.0 s" in lines[0]  # from run.end duration_ms, the task having no times
    assert "triage ticket #4821" in text  # task name taken from the lines
    assert "8000 in / 800 out" in text and "$0.0080" in text  # summed llm.call usage
    assert "openai/gpt-4o-mini" in text
    assert "(25 JSON, 1 logfmt, 1 plain text)" in text
    # first and last steps, with the middle elided
    assert "think 1" in text and "... " in text and "step 9: tool search_kb" in text
    assert "think 4" not in text
    assert lines[-1] == "Final: run.end at 03:00:44, status failed after 44.0 s: run failed"


async def test_errors_grouped_by_masked_message_with_first_example() -> None:
    _, text = await summary(Task(run_id="r"), failing_run())
    assert "2x TimeoutError: tool search_kb timed out after <*>s" in text
    assert 'first at line 22, 03:00:40: "tool search_kb timed out after 30s"' in text
    # the KeyError keeps its innermost frame; its message is not repeated as an example
    assert "1x KeyError: 'customer_id'" in text
    assert "at /app/a.py:3 in run" in text
    # a logfmt line at level error counts too
    assert "upstream reset" in text
    assert "Errors (4 lines, 3 distinct)" in text


async def test_repeated_tool_call_is_flagged_as_loop() -> None:
    _, text = await summary(Task(run_id="r"), failing_run())
    assert "possible loop" in text
    assert '4x search_kb {"k":5,"q":"refund policy"}' in text


async def test_plain_text_only_no_escape_sequences() -> None:
    _, text = await summary(Task(run_id="r"), failing_run())
    assert "\x1b" not in text
    assert all(ch == "\n" or ch >= " " for ch in text)


async def test_bounded_output_and_deterministic() -> None:
    lines = [j(ts=ts(0), event="run.start", agent="coder")]
    for i in range(3000):
        lines.append(j(ts=ts(i % 60), event="step", step=i, msg="x" * 500))
        # many distinct error shapes (words differ, so masking cannot merge them)
        lines.append(j(event="error", error_type=f"E{chr(65 + i % 26)}", error_message=f"w{i}x"))
        lines.append(j(event="tool.call", tool=f"t{i % 10}", args={"a": i % 10}))
    lines.append("\x00\x01 binary junk \xff")
    _, text = await summary(Task(run_id="r"), lines)
    out = text.splitlines()
    assert len(out) <= 40
    assert all(len(line) <= 160 for line in out)
    assert "more distinct errors" in text
    _, again = await summary(Task(run_id="r"), lines)
    assert again == text
    # a tiny budget still holds
    _, small = await summary(Task(run_id="r"), lines, max_lines=10)
    assert len(small.splitlines()) <= 10


async def test_no_run_end_and_no_lines() -> None:
    lines = [
        j(ts=ts(0), event="run.start", agent="browser", task="scrape"),
        j(ts=ts(9), event="step", step=1, msg="navigating"),
    ]
    _, text = await summary(Task(run_id="r"), lines)
    assert "running after 9.0 s" in text.splitlines()[0]  # span of the line timestamps
    assert "Errors: none." in text
    assert text.splitlines()[-1].startswith("Final: no run.end line")
    assert "navigating" in text.splitlines()[-1]
    _, empty = await summary(Task(run_id="r"), [])
    assert empty.startswith("Offline summary (extractive, no AI)")
    assert "no log lines were found" in empty


async def test_task_record_facts_win_over_lines() -> None:
    task = Task(
        run_id="r",
        agent="coder",
        task="fix issue #1",
        status=RunStatus.TIMEOUT,
        started_at=0,
        ended_at=90 * 10**9,
        model="anthropic/claude-3-haiku",
        input_tokens=5,
        output_tokens=6,
        cost_usd=1.5,
    )
    _, text = await summary(task, failing_run())
    first = text.splitlines()[0]
    assert "coder run r timeout after 1m 30s" in first
    assert "fix issue #1" in text and "5 in / 6 out" in text and "$1.5000" in text


def test_mask_message() -> None:
    assert mask_message("timeout after 30s") == mask_message("timeout after 31s")
    assert mask_message("run 550e8400-e29b-41d4-a716-446655440000 died") == "run <*> died"
    assert mask_message("object at 0x7f3a2c reset") == "object at <*> reset"
    assert mask_message("run-f2a752e6b438 gone") == "run-<*> gone"
    assert mask_message("cus_0a1b2c3d4e missing") == "cus_<*> missing"
    assert mask_message("deadbeef01 words") == "<*> words"
    assert mask_message("facade ok") == "facade ok"  # hex letters only, no digit: a word


async def test_no_run_end_but_task_is_terminal() -> None:
    lines = [j(ts=ts(0), event="run.start", agent="browser", task="scrape")]
    _, text = await summary(Task(run_id="r", status=RunStatus.CANCELLED), lines)
    assert text.splitlines()[-1] == (
        "Final: no run.end line in these logs; the task table says cancelled."
    )
