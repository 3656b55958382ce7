"""The `agentlog` CLI, run in-process through `main([...])` against a tmp data dir (and, for the
console script, Ctrl-C and the live tail, as real subprocesses)."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backend.cli import main as cli
from backend.cli import output as out
from backend.cli.progress import Progress
from backend.models import (
    LogEntry,
    MatrixResult,
    MatrixSeries,
    RunStatus,
    TailBatch,
    TailEntry,
    Task,
    TriageState,
)

AGENTLOG = Path(sys.executable).parent / "agentlog"
DEMO_SELECTOR = '{service_name="agentlog-demo"}'
ERROR_LINE = re.compile(r"^agentlog: error: .+\n$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def jsonl(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines()]


# Variables that would point the CLI at real services or another config: never inherited.
SERVICE_ENV = frozenset(
    {"LOKI_URL", "DATABASE_URL", "POSTGRES_HOST", "REDIS_URL", "REDIS_HOST", "OPENROUTER_API_KEY"}
)


def _foreign(name: str) -> bool:
    return name.startswith("AGENTLOG_") or name in SERVICE_ENV


def _clean_env() -> dict[str, str]:
    """The environment for a subprocess: ours, without agentlog settings or service URLs."""
    return {k: v for k, v in os.environ.items() if not _foreign(k)}


@pytest.fixture(autouse=True)
def _no_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if _foreign(name):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data dir with two hours of demo fleet history (seed 1), shared by the read-only tests."""
    base = tmp_path_factory.mktemp("cli-demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(base / "xdg-config"))
        mp.setenv("XDG_DATA_HOME", str(base / "xdg-data"))
        for name in list(os.environ):
            if _foreign(name):
                mp.delenv(name)
        data = base / "data"
        code = cli.main(
            ["--data-dir", str(data), "demo", "--backfill", "2h", "--seed", "1", "--agents", "4"]
        )
        assert code == 0
        yield data


def dd(path: Path) -> list[str]:
    return ["--data-dir", str(path)]


def tasks_json(capsys: pytest.CaptureFixture[str], data: Path, *extra: str) -> list[dict[str, Any]]:
    code, stdout, _ = run(capsys, *dd(data), "tasks", "--limit", "1000", "-o", "json", *extra)
    assert code == 0
    body = json.loads(stdout)
    assert body["next_cursor"] is None
    return list(body["tasks"])


# ---------------------------------------------------------------- basics


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "--version")
    assert (code, stdout) == (0, "agentlog 0.1.0\n")


def test_demo_final_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, stdout, stderr = run(
        capsys, *dd(tmp_path), "demo", "--backfill", "30m", "--seed", "3", "--agents", "2"
    )
    assert code == 0
    assert stdout == ""  # stderr is not a TTY here: no progress bar either
    m = re.fullmatch(r"demo: wrote (\d+) lines, (\d+) runs \((\d+) failed\) in [\d.]+ s\n", stderr)
    assert m, stderr
    lines, runs, failed = map(int, m.groups())
    assert lines > runs > 0 and failed <= runs
    # what it says it wrote is what the store holds
    code, stdout, _ = run(capsys, *dd(tmp_path), "tasks", "--limit", "1000", "-o", "jsonl")
    assert len(jsonl(stdout)) == runs


def test_bare_agentlog_prints_help_without_tui(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_load_tui", lambda: None)
    code, stdout, _ = run(capsys, *dd(tmp_path))
    assert code == 0
    assert stdout.startswith("usage: agentlog")
    assert "tasks" in stdout and "ingest" in stdout


def test_bare_agentlog_opens_tui_with_settings_and_demo_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(settings: Any, *, demo: bool) -> int:
        seen["data_dir"], seen["demo"] = settings.data_dir, demo
        return 0

    monkeypatch.setattr(cli, "_load_tui", lambda: SimpleNamespace(run=fake_run))
    assert run(capsys, "--demo", *dd(tmp_path))[0] == 0
    assert seen == {"data_dir": tmp_path, "demo": True}


def test_usage_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for argv in (
        ["nosuchverb"],
        ["query"],  # missing LOGQL
        ["tasks", "--status", "exploded"],
        ["tasks", "--limit", "0"],
        ["query", DEMO_SELECTOR, "--limit", "0"],
        ["query", DEMO_SELECTOR, "--since", "yesterday"],
        ["query", DEMO_SELECTOR, "--from", "not-a-time"],
        ["triage", "r1", "explode"],
        ["ingest", str(tmp_path / "missing.log")],
        ["ingest", "-", "--labels", "bad name=x"],
    ):
        code, stdout, stderr = run(capsys, *dd(tmp_path), *argv)
        assert code == 2, argv
        assert stdout == ""
        assert ERROR_LINE.fullmatch(stderr), (argv, stderr)
    _, _, stderr = run(capsys, *dd(tmp_path), "tasks", "--status", "exploded")
    assert "failed" in stderr and "exploded" in stderr


def test_bad_logql_exit_2_with_position(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    code, stdout, stderr = run(capsys, *dd(demo_dir), "query", '{service_name="agentlog-demo"')
    assert code == 2 and stdout == ""
    assert ERROR_LINE.fullmatch(stderr)
    assert re.search(r"parse error at line 1, col \d+", stderr), stderr
    code, _, stderr = run(capsys, *dd(demo_dir), "query", DEMO_SELECTOR, "--instant")
    assert code == 2  # a log query cannot be instant (Loki 3.2+)
    assert "instant" in stderr


def test_bad_config_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("embedded:\n  retention: banana\n")
    code, stdout, stderr = run(capsys, "--config", str(bad), "tasks")
    assert code == 2 and stdout == ""
    assert ERROR_LINE.fullmatch(stderr)
    assert "embedded.retention" in stderr and "banana" in stderr
    code, _, stderr = run(capsys, "--config", str(tmp_path / "nope.yaml"), "config", "check")
    assert code == 2 and ERROR_LINE.fullmatch(stderr)


def test_unknown_run_is_exit_1(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    for verb in (["task", "run-nope"], ["summarize", "run-nope"], ["triage", "run-nope", "ack"]):
        code, stdout, stderr = run(capsys, *dd(demo_dir), *verb)
        assert code == 1, verb
        assert stdout == ""
        assert ERROR_LINE.fullmatch(stderr) and "run-nope" in stderr


def test_config_check_masks_secrets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "summarizer:\n  api_key: sk-or-v1-supersecret\n"
        "redis:\n  url: redis://user:hunter2@cache:6379/0\n"
        "tui:\n  user: carol\n"
    )
    code, stdout, stderr = run(capsys, "--config", str(cfg), *dd(tmp_path), "config", "check")
    assert code == 0
    assert "supersecret" not in stdout and "hunter2" not in stdout
    assert re.search(r"summarizer\.api_key\s+= \*\*\*\*", stdout)
    assert "redis://user:****@cache:6379/0" in stdout
    assert re.search(r"tui\.user\s+= carol", stdout)
    assert str(cfg) in stderr
    code, stdout, _ = run(capsys, "config", "check", "--config", str(cfg), "-o", "json")
    assert code == 0
    body = json.loads(stdout)
    assert body["summarizer"]["api_key"] == "****"
    assert body["redis"]["url"] == "redis://user:****@cache:6379/0"
    assert "supersecret" not in stdout


# ---------------------------------------------------------------- tasks


def test_tasks_status_filter_text_and_json(
    capsys: pytest.CaptureFixture[str], demo_dir: Path
) -> None:
    failed = tasks_json(capsys, demo_dir, "--status", "failed")
    assert failed and all(t["status"] == "failed" for t in failed)
    code, stdout, _ = run(capsys, *dd(demo_dir), "tasks", "--status", "failed", "--limit", "1000")
    assert code == 0
    header, *rows = stdout.splitlines()
    assert header.split() == [
        "STATUS", "RUN", "AGENT", "TASK", "STARTED", "DUR", "ERR", "TOK", "COST", "TRIAGE"
    ]  # fmt: skip
    assert len(rows) == len(failed)
    assert all(r.startswith("✗ failed ") for r in rows)
    assert all(len(r) <= 80 for r in rows)
    # the short run ids in the table are those of the JSON listing, in the same order
    assert [r.split()[2] for r in rows] == [t["run_id"][:8] for t in failed]
    # several statuses at once; other statuses are absent
    both = tasks_json(capsys, demo_dir, "--status", "failed,timeout")
    assert {t["status"] for t in both} <= {"failed", "timeout"}
    assert len(both) >= len(failed)


def test_tasks_json_fields_and_failing_first(
    capsys: pytest.CaptureFixture[str], demo_dir: Path
) -> None:
    tasks = tasks_json(capsys, demo_dir)
    assert len(tasks) > 20
    t = tasks[0]
    assert set(t) >= {"run_id", "agent", "task", "status", "started_at", "triage", "cost_usd"}
    assert isinstance(t["started_at"], int) and t["started_at"] > 1_600_000_000 * 10**9
    failing = {"failed", "timeout", "stalled"}
    flags = [x["status"] in failing for x in tasks]
    assert flags == sorted(flags, reverse=True)  # failing runs first
    agents = {x["agent"] for x in tasks}
    assert agents == {"planner", "researcher", "coder", "reviewer"}
    only = tasks_json(capsys, demo_dir, "--agent", "coder")
    assert only and {x["agent"] for x in only} == {"coder"}
    newest = tasks_json(capsys, demo_dir, "--sort", "newest")
    starts = [x["started_at"] for x in newest]
    assert starts == sorted(starts, reverse=True)


@pytest.mark.parametrize("sort", ["failing", "newest"])
def test_tasks_pagination_with_cursor(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, sort: str
) -> None:
    everything = [t["run_id"] for t in tasks_json(capsys, demo_dir, "--sort", sort)]
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(1000):
        code, stdout, _ = run(
            capsys, *dd(demo_dir), "tasks", "--sort", sort, "--limit", "50", *cursor
        )
        assert code == 0
        lines = stdout.splitlines()
        last = lines[-1]
        if last.startswith("next cursor: "):
            rows = lines[1:-1]
            cursor = ["--cursor", last.removeprefix("next cursor: ")]
        else:
            rows, cursor = lines[1:], []
        assert len(rows) <= 50
        seen.extend(r.split()[2] for r in rows)
        if not cursor:
            break
    assert len(everything) > 100
    assert seen == [r[:8] for r in everything]
    # json pages carry the cursor in the body
    code, stdout, _ = run(capsys, *dd(demo_dir), "tasks", "--limit", "3", "-o", "json")
    body = json.loads(stdout)
    assert len(body["tasks"]) == 3 and isinstance(body["next_cursor"], str)
    code, _, stderr = run(capsys, *dd(demo_dir), "tasks", "--cursor", "garbage")
    assert code == 2 and ERROR_LINE.fullmatch(stderr)


def test_task_facts(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    failed = tasks_json(capsys, demo_dir, "--status", "failed")[0]
    code, stdout, _ = run(capsys, *dd(demo_dir), "task", failed["run_id"])
    assert code == 0
    facts = dict(line.split(":", 1) for line in stdout.splitlines())
    facts = {k: v.strip() for k, v in facts.items()}
    assert facts["run_id"] == failed["run_id"]
    assert facts["status"] == "✗ failed"
    assert facts["agent"] == failed["agent"]
    assert facts["errors"] == str(failed["error_count"])
    assert facts["last error"] == failed["last_error"]
    code, stdout, _ = run(capsys, *dd(demo_dir), "-o", "json", "task", failed["run_id"])
    assert json.loads(stdout) == failed


def test_summarize_streams_and_caches(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    failed = tasks_json(capsys, demo_dir, "--status", "failed")[0]
    code, stdout, stderr = run(capsys, *dd(demo_dir), "summarize", failed["run_id"])
    assert code == 0
    assert stdout.strip()
    assert "extractive" in stderr
    code, stdout2, _ = run(capsys, *dd(demo_dir), "summarize", failed["run_id"], "-o", "json")
    body = json.loads(stdout2)
    assert body["run_id"] == failed["run_id"] and body["offline"] is True
    assert body["text"].strip() == stdout.strip()
    code, stdout3, _ = run(capsys, *dd(demo_dir), "summarize", failed["run_id"], "-o", "jsonl")
    objs = jsonl(stdout3)
    assert "".join(o.get("text", "") for o in objs[:-1]) == body["text"]
    assert objs[-1]["summary"]["input_hash"] == body["input_hash"]


def test_triage_default_user_and_filter(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (
        run(capsys, *dd(tmp_path), "demo", "--backfill", "1h", "--seed", "5", "--agents", "2")[0]
        == 0
    )
    runs = tasks_json(capsys, tmp_path)
    first, second = runs[0]["run_id"], runs[1]["run_id"]
    code, stdout, _ = run(
        capsys,
        *dd(tmp_path),
        "triage",
        first,
        "ack",
        "--by",
        "alice",
        "--note",
        "on it",
        "-o",
        "json",
    )
    assert code == 0
    body = json.loads(stdout)
    assert (body["triage"], body["triage_by"], body["triage_note"]) == ("acked", "alice", "on it")
    monkeypatch.setenv("AGENTLOG_TUI__USER", "bob")
    code, stdout, _ = run(capsys, *dd(tmp_path), "triage", second, "ignore")
    assert code == 0
    assert stdout == f"{second}: triage ignored by bob\n"
    assert [t["run_id"] for t in tasks_json(capsys, tmp_path, "--triage", "acked")] == [first]
    assert [t["run_id"] for t in tasks_json(capsys, tmp_path, "--triage", "ignore")] == [second]
    new = tasks_json(capsys, tmp_path, "--triage", "new")
    assert len(new) == len(runs) - 2
    code, stdout, _ = run(capsys, *dd(tmp_path), "task", first)
    assert "triage by:   alice" in stdout and "triage note: on it" in stdout


# ---------------------------------------------------------------- logs


def test_query_line_filter_text_and_json(
    capsys: pytest.CaptureFixture[str], demo_dir: Path
) -> None:
    q = DEMO_SELECTOR + ' |= "timeout"'
    code, stdout, _ = run(
        capsys, *dd(demo_dir), "query", q, "--since", "3h", "--limit", "5000", "-o", "json"
    )
    assert code == 0
    body = json.loads(stdout)
    assert body["status"] == "success"
    data = body["data"]
    assert data["resultType"] == "streams"
    assert "summary" in data["stats"]
    values = [v for s in data["result"] for v in s["values"]]
    assert values, "the demo fleet writes timeouts"
    for ts, line in values:
        assert isinstance(ts, str) and ts.isdigit()
        assert "timeout" in line
    for s in data["result"]:
        assert s["stream"]["service_name"] == "agentlog-demo"
    # text: the same entries, newest first, each `TIMESTAMP  {labels}  line`
    code, stdout, stderr = run(
        capsys, *dd(demo_dir), "query", q, "--since", "3h", "--limit", "5000"
    )
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) == len(values)
    assert 'service_name="agentlog-demo"' in stderr  # common labels, said once
    stamps = []
    for line in lines:
        ts_text, rest = line.split("  ", 1)
        stamps.append(ts_text)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", ts_text)
        assert "timeout" in rest
        assert 'service_name="agentlog-demo"' not in rest
    assert stamps == sorted(stamps, reverse=True)
    # jsonl: one entry per line, forward = oldest first
    code, stdout, _ = run(
        capsys,
        *dd(demo_dir),
        "query",
        q,
        "--since",
        "3h",
        "--limit",
        "5",
        "--direction",
        "forward",
        "-o",
        "jsonl",
    )
    objs = jsonl(stdout)
    assert len(objs) == 5
    assert [int(o["timestamp"]) for o in objs] == sorted(int(o["timestamp"]) for o in objs)
    assert all("timeout" in o["line"] and o["labels"]["env"] == "demo" for o in objs)
    oldest = sorted(int(v[0]) for v in values)[:5]
    assert [int(o["timestamp"]) for o in objs] == oldest


def test_query_time_range_and_limit(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    code, stdout, _ = run(
        capsys, *dd(demo_dir), "query", DEMO_SELECTOR, "--since", "3h", "-o", "jsonl"
    )
    objs = jsonl(stdout)
    assert len(objs) == 100  # the default limit
    newest = int(objs[0]["timestamp"])
    lo, hi = newest - 10 * 10**9, newest
    code, stdout, _ = run(
        capsys, *dd(demo_dir), "query", DEMO_SELECTOR, "--from", str(lo), "--to", str(hi),
        "--limit", "100000", "-o", "jsonl",
    )  # fmt: skip
    assert code == 0
    got = [int(o["timestamp"]) for o in jsonl(stdout)]
    assert got and all(lo <= t < hi for t in got)  # start <= ts < end


def test_metric_query_table_and_json(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    q = f"sum by (level) (count_over_time({DEMO_SELECTOR}[30m]))"
    end = time.time_ns()
    start = end - 2 * 3600 * 10**9
    window = ["--from", str(start), "--to", str(end)]
    code, stdout, _ = run(capsys, *dd(demo_dir), "query", q, *window, "--step", "30m", "-o", "json")
    assert code == 0
    data = json.loads(stdout)["data"]
    assert data["resultType"] == "matrix"
    levels = {s["metric"]["level"] for s in data["result"]}
    assert levels == {"info", "warn", "error"}
    for s in data["result"]:
        assert set(s["metric"]) == {"level"}
        for t, v in s["values"]:
            assert isinstance(t, int | float) and isinstance(v, str)
            float(v)
    # the four 30m windows ending at start+30m ... end tile (start, end]: their sum over all
    # levels is the number of lines a log query returns for the same range
    total = sum(int(v) for s in data["result"] for t, v in s["values"] if t * 1e9 > start + 1e9)
    code, stdout, _ = run(
        capsys, *dd(demo_dir), "query", DEMO_SELECTOR, *window, "--limit", "100000", "-o", "jsonl"
    )
    assert total == len(jsonl(stdout)) > 0
    code, text, _ = run(capsys, *dd(demo_dir), "query", q, *window, "--step", "30m")
    assert code == 0
    blocks = text.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [
        '{level="error"}',
        '{level="info"}',
        '{level="warn"}',
    ]
    by_level = {s["metric"]["level"]: s["values"] for s in data["result"]}
    for block in blocks:
        head, *rows = block.splitlines()
        level = head.split('"')[1]
        assert [r.split()[-1] for r in rows] == [v for _, v in by_level[level]]
    # instant: a vector
    code, stdout, _ = run(capsys, *dd(demo_dir), "query", q, "--instant", "-o", "json")
    assert code == 0
    assert json.loads(stdout)["data"]["resultType"] == "vector"


def test_labels_and_series(capsys: pytest.CaptureFixture[str], demo_dir: Path) -> None:
    code, stdout, _ = run(capsys, *dd(demo_dir), "labels", "--since", "3h")
    assert code == 0
    assert stdout.splitlines() == ["agent", "env", "level", "service_name"]
    code, stdout, _ = run(capsys, *dd(demo_dir), "labels", "agent", "--since", "3h", "-o", "json")
    assert json.loads(stdout) == {
        "status": "success",
        "data": ["coder", "planner", "researcher", "reviewer"],
    }
    code, stdout, _ = run(
        capsys, *dd(demo_dir), "labels", "agent", "--since", "3h", "--query", '{agent="coder"}'
    )
    assert stdout == "coder\n"
    code, stdout, _ = run(capsys, *dd(demo_dir), "series", '{agent="coder"}', "--since", "3h")
    assert code == 0
    lines = stdout.splitlines()
    assert lines == [
        f'{{agent="coder",env="demo",level="{lvl}",service_name="agentlog-demo"}}'
        for lvl in ("error", "info", "warn")
    ]
    code, stdout, _ = run(capsys, *dd(demo_dir), "series", "--since", "3h", "-o", "json")
    body = json.loads(stdout)
    assert body["status"] == "success" and len(body["data"]) == 12  # 4 agents x 3 levels
    code, stdout, _ = run(
        capsys,
        *dd(demo_dir),
        "labels",
        "--since",
        "3h",
        "-o",
        "json",
        "--query",
        '{agent="nobody"}',
    )
    assert json.loads(stdout) == {"status": "success"}  # Loki leaves data out when empty


# ---------------------------------------------------------------- ingest


def test_ingest_then_query_tasks_and_escapes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    now = time.time_ns()
    t1, t2, t3 = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now / 1e9 - s)) for s in (30, 20, 10)
    )
    big = "y" * (1024 * 1024)
    content = b"\n".join(
        [
            json.dumps(
                {"ts": f"{t1}Z", "agent": "a1", "level": "info", "run_id": "r-ing-1"}
                | {"event": "run.start", "task": "ingest test"}
            ).encode(),
            b"",
            f"time={t2}Z agent=a1 level=error run_id=r-ing-1 event=error error.type=Timeout "
            f'error.message="tool timed out"'.encode(),
            b"plain text line without fields",
            b"   ",
            b"bad utf8 \xff\xfe here \xc3",
            json.dumps(
                {"ts": f"{t3}Z", "agent": "a1", "level": "info", "run_id": "r-ing-1"}
                | {"event": "run.end", "status": "failed"}
            ).encode(),
            ('{"agent":"a1","level":"info","msg":"' + big + '"}').encode(),
            b"\x1b[31mred alert\x1b[0m \x07 done",
            b"",
        ]
    )
    log = tmp_path / "mixed.log"
    log.write_bytes(content)
    code, stdout, stderr = run(capsys, *dd(tmp_path), "ingest", str(log))
    assert code == 0, stderr
    assert re.search(r"^ingested 7 lines \(1 runs\) in [\d.]+ s$", stderr, re.M), stderr
    assert "truncated" in stderr  # the 1 MB line is over the store's 256 KiB line limit

    # streams: agent/level from the lines; plain lines get service_name=ingest; no run_id label
    code, stdout, _ = run(capsys, *dd(tmp_path), "series", "-o", "json")
    series = json.loads(stdout)["data"]
    assert sorted(series, key=str) == sorted(
        [
            {"agent": "a1", "level": "info"},
            {"agent": "a1", "level": "error"},
            {"service_name": "ingest"},
        ],
        key=str,
    )
    # the run id went to structured metadata, and the task table saw the run
    code, stdout, _ = run(
        capsys, *dd(tmp_path), "query", '{agent="a1"} | run_id="r-ing-1"', "-o", "jsonl"
    )
    assert len(jsonl(stdout)) == 3
    code, stdout, _ = run(capsys, *dd(tmp_path), "task", "r-ing-1", "-o", "json")
    task = json.loads(stdout)
    assert (task["status"], task["agent"], task["task"], task["error_count"]) == (
        "failed", "a1", "ingest test", 1
    )  # fmt: skip

    # bad bytes are kept visible; control characters never reach the terminal in text mode
    code, stdout, _ = run(capsys, *dd(tmp_path), "query", '{service_name="ingest"}')
    assert code == 0
    assert "bad utf8 \\xff\\xfe here \\xc3" in stdout
    assert "\x1b" not in stdout and "\x07" not in stdout
    assert "\\x1b[31mred alert\\x1b[0m \\x07 done" in stdout
    # ... while JSON keeps the exact line
    code, stdout, _ = run(capsys, *dd(tmp_path), "query", '{service_name="ingest"}', "-o", "json")
    lines = {v[1] for s in json.loads(stdout)["data"]["result"] for v in s["values"]}
    assert "\x1b[31mred alert\x1b[0m \x07 done" in lines
    assert "plain text line without fields" in lines

    # the 1 MB line was stored cut, with the store's marker
    code, stdout, _ = run(
        capsys, *dd(tmp_path), "query", '{agent="a1",level="info"} |= "yyyy"', "-o", "jsonl"
    )
    [big_entry] = jsonl(stdout)
    assert len(big_entry["line"].encode()) < 300 * 1024
    assert "truncated" in big_entry["line"]


def test_ingest_stdin_labels_and_json_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b'first line\nsecond line\n{"run_id":"r9","msg":"x"}\n'
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, stdout, stderr = run(
        capsys,
        *dd(tmp_path),
        "ingest",
        "-",
        "--labels",
        "job=cron,env=prod",
        "--batch",
        "2",
        "-o",
        "json",
    )
    assert code == 0
    report = json.loads(stdout)
    assert (report["lines"], report["accepted"], report["runs"]) == (3, 3, 1)
    assert "ingested 3 lines (1 runs)" in stderr
    code, stdout, _ = run(
        capsys, *dd(tmp_path), "query", '{job="cron"}', "--direction", "forward", "-o", "jsonl"
    )
    objs = jsonl(stdout)
    assert [o["line"] for o in objs] == ["first line", "second line", '{"run_id":"r9","msg":"x"}']
    # the run id is structured metadata: query results merge it into the labels, as Loki does
    assert [o["labels"] for o in objs] == [{"job": "cron", "env": "prod"}] * 2 + [
        {"job": "cron", "env": "prod", "run_id": "r9"}
    ]
    assert objs[2]["metadata"] == {"run_id": "r9"}
    code, stdout, _ = run(capsys, *dd(tmp_path), "series", "-o", "json")
    assert json.loads(stdout)["data"] == [{"env": "prod", "job": "cron"}]
    # same-second lines without timestamps keep their file order (strictly increasing ns)
    ts = [int(o["timestamp"]) for o in objs]
    assert ts == sorted(ts) and len(set(ts)) == 3


# ---------------------------------------------------------------- output helpers


def test_escape_control_and_labels() -> None:
    assert out.escape_control("a\x1b[2Jb\tc\x9bd\x00") == "a\\x1b[2Jb\tc\\x9bd\\x00"
    assert out.escape_control("x\ny", keep_newlines=True) == "x\ny"
    assert out.escape_control("x\ny") == "x\\x0ay"
    assert out.format_labels({"b": 'q"t', "a": "1\n"}) == '{a="1\\n",b="q\\"t"}'


def test_log_line_format_truncates_labels_not_lines() -> None:
    fmt = out.LogLineFormatter(label_width=20)
    line = "L" * 200
    text = fmt.format(
        {"agent": "a-very-long-agent-name", "level": "info"}, 1_714_557_600_123_000_000, line
    )
    ts, labels, rest = text.split("  ", 2)
    assert ts.endswith(ts[-6:]) and ".123" in ts
    assert len(labels) == 20 and labels.endswith("…")
    assert rest == line


def test_format_value_and_short_formats() -> None:
    assert [out.format_value(v) for v in (37.0, 37.7, 1e-05, float("nan"), float("inf"))] == [
        "37",
        "37.7",
        "0.00001",
        "NaN",
        "+Inf",
    ]
    assert out.format_duration_short(125 * 10**9) == "2m05s"
    assert out.format_ago(1000 * 10**9, 1300 * 10**9) == "5m ago"
    assert out.format_count(12345) == "12k" and out.format_count(1234) == "1.2k"
    costs = [0.0, 0.004, 0.42, 12.34, 456.0, 1234.0]
    assert [out.format_cost(c) for c in costs] == ["-", "<1¢", "$0.42", "$12.3", "$456", "$1.2k"]


def test_task_table_fits_80_columns_with_wide_text() -> None:
    now = 2_000_000_000 * 10**9
    tasks = [
        Task(
            run_id="run-" + "f" * 30,
            agent="researcher-with-a-long-name",
            task="調査: 価格を比較する " * 5,
            status=status,
            started_at=now - 300 * 10**9,
            ended_at=now - 10 * 10**9,
            error_count=12,
            input_tokens=123_456,
            output_tokens=7_000,
            cost_usd=1.5,
            triage=TriageState.RESOLVED,
        )
        for status in RunStatus
    ]
    rows = out.render_task_table(tasks, now)
    assert len(rows) == 1 + len(RunStatus)
    for row in rows:
        assert out.display_width(row) <= 80, row
    assert rows[1].startswith("● running")
    assert (
        "5m ago" in rows[1] and "4m50s" in rows[1] and "$1.50" in rows[1] and "resolved" in rows[1]
    )
    glyphs = [r.split()[0] for r in rows[1:]]
    assert glyphs == ["●", "✓", "✗", "⊘", "⏱", "⏸"]


def test_metric_text_table() -> None:
    res = MatrixResult(
        series=[MatrixSeries({"level": "warn"}, [(1714557600.0, 3.0), (1714557660.0, 2.5)])]
    )
    lines = out.render_metric_text(res)
    assert lines[0] == '{level="warn"}'
    assert [ln.split()[-1] for ln in lines[1:]] == ["3", "2.5"]
    assert out.query_result_json(res)["data"]["result"] == [
        {"metric": {"level": "warn"}, "values": [[1714557600.0, "3"], [1714557660.0, "2.5"]]}
    ]


def test_progress_draws_only_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    pipe = io.StringIO()
    p = Progress("ingest", stream=pipe)
    p.update(5, 10, force=True)
    p.close()
    assert pipe.getvalue() == ""
    tty = Tty()
    p = Progress("demo", stream=tty, unit="runs")
    p.update(5, 10, force=True)
    assert "50.0%" in tty.getvalue() and "5/10 runs" in tty.getvalue()
    p.close()
    assert tty.getvalue().endswith("\r\x1b[K")


# ---------------------------------------------------------------- the console script


def test_console_script_version_and_query(demo_dir: Path, tmp_path: Path) -> None:
    env = {**_clean_env(), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    res = subprocess.run(
        [str(AGENTLOG), "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert (res.returncode, res.stdout) == (0, "agentlog 0.1.0\n")
    res = subprocess.run(
        [str(AGENTLOG), "query", DEMO_SELECTOR + ' |= "error"', "--since", "3h", "--limit", "3",
         "-o", "jsonl", "--data-dir", str(demo_dir)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    objs = jsonl(res.stdout)
    assert len(objs) == 3 and all("error" in o["line"] for o in objs)
    res = subprocess.run(
        [str(AGENTLOG), "query", "{", "--data-dir", str(demo_dir)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2
    assert ERROR_LINE.fullmatch(res.stderr) and "Traceback" not in res.stderr


def _wait_for(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_tail_follows_and_ctrl_c_exits_0(tmp_path: Path) -> None:
    env = {
        **_clean_env(),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "AGENTLOG_DATA_DIR": str(tmp_path / "d"),
    }
    first = tmp_path / "first.log"
    first.write_text("before the tail\n")
    assert (
        subprocess.run(
            [str(AGENTLOG), "ingest", str(first)], env=env, capture_output=True, timeout=60
        ).returncode
        == 0
    )
    out_path = tmp_path / "tail.out"
    with out_path.open("wb") as sink:
        proc = subprocess.Popen(
            [str(AGENTLOG), "tail", '{service_name="ingest"}'],
            stdout=sink, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        try:
            _wait_for(lambda: b"before the tail" in out_path.read_bytes())
            second = tmp_path / "second.log"
            second.write_text("after the tail started\n")
            subprocess.run(
                [str(AGENTLOG), "ingest", str(second)], env=env, capture_output=True, timeout=60
            )
            _wait_for(lambda: b"after the tail started" in out_path.read_bytes())
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    assert b"Traceback" not in stderr
    text = out_path.read_text()
    assert text.index("before the tail") < text.index("after the tail started")


def test_demo_live_ctrl_c_prints_final_line(tmp_path: Path) -> None:
    env = {
        **_clean_env(),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "AGENTLOG_DATA_DIR": str(tmp_path / "d"),
    }
    proc = subprocess.Popen(
        [str(AGENTLOG), "demo", "--rate", "120", "--speed", "50", "--seed", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    text = stderr.decode()
    assert "Traceback" not in text
    m = re.search(r"^demo: wrote (\d+) lines, (\d+) runs \((\d+) failed\) in [\d.]+ s$", text, re.M)
    assert m, text
    assert int(m.group(1)) > 0


def test_tail_frame_shape() -> None:
    batch = TailBatch(
        entries=[
            TailEntry({"job": "a"}, LogEntry(1, "x")),
            TailEntry({"job": "b"}, LogEntry(2, "y")),
            TailEntry({"job": "a"}, LogEntry(3, "z")),
        ],
        dropped=5,
        dropped_from=10,
        dropped_to=20,
    )
    assert cli._tail_frame(batch) == {
        "streams": [
            {"stream": {"job": "a"}, "values": [["1", "x"], ["3", "z"]]},
            {"stream": {"job": "b"}, "values": [["2", "y"]]},
        ],
        "dropped": 5,
        "dropped_from": "10",
        "dropped_to": "20",
    }
    assert "dropped" not in cli._tail_frame(TailBatch(entries=[]))
