"""`agentlog patterns` and `agentlog analytics`: real runs against a demo store."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backend.cli.main import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("insights")
    assert (
        main(["--data-dir", str(d), "demo", "--backfill", "1h", "--seed", "5", "--agents", "3"])
        == 0
    )
    return str(d)


def test_patterns_text_lists_failure_modes(
    data_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", data_dir, "patterns", "--since", "2h"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["KIND", "NEW", "COUNT", "RUNS", "AGENTS", "TEMPLATE"]
    assert any("timed out after <*>" in ln for ln in lines)
    assert all(len(ln) <= 80 for ln in lines)


def test_patterns_json_is_the_report(data_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", data_dir, "-o", "json", "patterns", "--since", "2h"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    kinds = {p["kind"] for p in report["patterns"]}
    assert "error" in kinds
    counts = [(-p["run_count"], -p["count"]) for p in report["patterns"]]
    assert counts == sorted(counts)


def test_patterns_file_jsonl_one_object_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "in.log"
    f.write_bytes(
        b"tool search timed out after 30s\n"
        b"connection reset by peer 10.0.0.1:443\n"
        b"tool search timed out after 31s\n"
        b"\xff\xfe junk\n"
    )
    assert main(["-o", "jsonl", "patterns", "--file", str(f)]) == 0
    rows = [orjson.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["pattern"] == rows[2]["pattern"] != rows[1]["pattern"]
    assert rows[0]["template"] == "tool search timed out after <*>"


def test_patterns_file_missing_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["patterns", "--file", "/nonexistent/x.log"]) == 2
    assert "cannot read /nonexistent/x.log" in capsys.readouterr().err


def test_analytics_overview_and_performance(
    data_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["--data-dir", data_dir, "-o", "json", "analytics", "overview", "--since", "2h"]) == 0
    )
    ov = orjson.loads(capsys.readouterr().out)
    cur = ov["current"]
    assert cur["runs"] == sum(cur["by_status"].values()) > 0
    assert main(["--data-dir", data_dir, "analytics", "performance", "--since", "2h"]) == 0
    text = capsys.readouterr().out
    assert "run duration by agent" in text and "LLM calls by model" in text
