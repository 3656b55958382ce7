"""Log compression for prompts: templates with counts, every error kept, budget kept."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from backend.summarize.compress import CHARS_PER_TOKEN, compress_logs, estimate_tokens


def j(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def big_run(repeats: int = 500) -> list[str]:
    c = {"run_id": "r1", "agent": "coder"}
    out = [j(ts="2025-01-01T00:00:00Z", level="info", event="run.start", msg="start", **c)]
    for i in range(repeats):
        out.append(j(level="info", event="step", step=i, msg=f"reading file {i}.py", **c))
        if i == 200:
            out.append(j(level="error", event="error", **{"error.type": "KeyError"}, msg="x", **c))
        if i % 3 == 0:
            out.append(
                j(
                    level="error",
                    event="error",
                    **{"error.type": "RateLimitError"},
                    **{"error.message": f"HTTP 429, retry after {i % 9}s"},
                    **c,
                )
            )
    out.append("Traceback (most recent call last):")
    out.append('  File "/app/x.py", line 3, in run')
    out.append("ValueError: invalid literal for int() with base 10: 'abc'")
    out.append(j(level="error", event="run.end", status="failed", msg="run failed", **c))
    return out


def test_token_estimate() -> None:
    assert CHARS_PER_TOKEN == 4
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


@pytest.mark.parametrize("budget", [1, 20, 100, 300, 1000, 4000, 100_000])
def test_budget_is_never_exceeded(budget: int) -> None:
    c = compress_logs(big_run(), budget)
    assert len(c.text) <= budget * CHARS_PER_TOKEN
    assert c.tokens == estimate_tokens(c.text) <= budget


def test_templates_counts_errors_and_edges() -> None:
    lines = big_run()
    c = compress_logs(lines, 1500)
    text = c.text
    assert c.total_lines == len(lines)
    # repeated lines appear once as a template with its count and first line number
    assert '500x L2 {"level":<*>,"event":<*>,"msg":"reading file <*>","step":<*>}' in text
    assert "167x L" in text
    # every distinct error: its first occurrence, marked with its count
    assert c.error_groups == 4  # RateLimitError, KeyError, Traceback, ValueError (not run.end)
    assert '[error, 167x] {"level":"error","event":"error","error.type":"RateLimitError"' in text
    assert '[error] {"level":"error","event":"error","error.type":"KeyError"' in text
    assert "ValueError: invalid literal for int() with base 10: 'abc'" in text
    # first and last lines
    assert 'L1 {"level":"info","event":"run.start"' in text
    assert f'L{len(lines)} {{"level":"error","event":"run.end"' in text
    # fields common to every JSON line are stated once, not on every line
    assert 'Every JSON line also has: {"run_id":"r1","agent":"coder"}' in text
    assert text.count('"run_id":"r1"') == 1
    # but the line count shown is far below the input
    assert c.kept_lines < len(lines) / 4


def test_errors_survive_a_small_budget() -> None:
    c = compress_logs(big_run(), 400)
    assert "KeyError" in c.text and "RateLimitError" in c.text and "ValueError" in c.text
    assert "run.end" in c.text


def test_small_input_is_kept_whole() -> None:
    lines = ["hello", "world\nsecond line", "bye"]
    c = compress_logs(lines, 1000)
    assert c.kept_lines == 3
    assert "L2 world\\nsecond line" in c.text  # one entry, one line
    assert c.text.splitlines()[-1] == "L3 bye"


def test_deterministic_and_hashed() -> None:
    a = compress_logs(big_run(), 800)
    b = compress_logs(big_run(), 800)
    assert a == b
    assert a.sha256 == hashlib.sha256(a.text.encode()).hexdigest()
    assert compress_logs(big_run(501), 800).sha256 != a.sha256


def test_empty() -> None:
    c = compress_logs([], 100)
    assert (c.total_lines, c.kept_lines, c.templates, c.error_groups) == (0, 0, 0, 0)
    assert c.text.startswith("0 log lines")


def test_long_lines_are_cut_with_a_marker() -> None:
    c = compress_logs(["x" * 5000, "short"], 2000)
    first = c.text.splitlines()[2]
    assert first.startswith("L1 xxx") and first.endswith("chars]") and len(first) <= 800
