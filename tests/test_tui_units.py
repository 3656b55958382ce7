"""Unit tests of the TUI's pure parts: sanitizer, formatting, time ranges, key map, filters,
display lines, source status, the app's log files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from rich.color import ColorType
from rich.style import Style

from backend.models import (
    HealthState,
    LogEntry,
    RunStatus,
    SourceHealth,
    TailEntry,
    Task,
    TaskSort,
    TriageState,
)
from tui import fmt
from tui.bindings import KEYS, bindings_for, effective_key, key_label, unknown_ids
from tui.logfiles import DailyFileHandler, setup_file_logging
from tui.loglines import LineMaker, level_of, marker_line
from tui.sanitize import safe_text, sanitize, sanitize_block
from tui.screens.help import help_table
from tui.status import SourceStatus, describe
from tui.task_query import TaskQuery
from tui.timerange import PRESETS, TimeRange, duration_label, parse_duration

NS = 1_000_000_000

# ---------------------------------------------------------------- sanitizer

HOSTILE = {
    "markup": ("[bold red]x[/]", "[bold red]x[/]"),
    "ansi": ("\x1b[31mred\x1b[0m", "␛[31mred␛[0m"),
    "osc52": ("\x1b]52;c;ZXZpbA==\x07", "␛]52;c;ZXZpbA==␇"),
    "osc8": ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "␛]8;;http://evil␛\\link␛]8;;␛\\"),
    "cr": ("safe\rEVIL", "safe␍EVIL"),
    "bs": ("abc\b\b\bxyz", "abc␈␈␈xyz"),
    "nul": ("a\x00b", "a␀b"),
    "newline": ("one\ntwo", "one␊two"),
    "del": ("a\x7fb", "a␡b"),
    "c1_csi": ("a\x9b31mb", "a\\x9b31mb"),
    "bidi_rlo": ("user\u202egnp.exe", "user\\u202egnp.exe"),
    "bidi_isolate": ("a\u2066b\u2069c", "a\\u2066b\\u2069c"),
    "line_sep": ("a\u2028b", "a\\u2028b"),
    "surrogate": ("bad \udcff byte", "bad \\xff byte"),
    "tab": ("a\tb", "a b"),
    "replacement_char_kept": ("caf\ufffd", "caf\ufffd"),
    "wide_kept": ("日本語 ✓", "日本語 ✓"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_sanitize(name: str) -> None:
    raw, shown = HOSTILE[name]
    assert sanitize(raw) == shown


def test_sanitized_text_has_no_control_characters() -> None:
    every = "".join(chr(c) for c in range(0x00, 0xA0)) + "\u202a\u202b\u202c\u202d\u202e"
    out = sanitize(every + "\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in out)
    assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_safe_text_is_never_markup() -> None:
    text = safe_text("[bold]x[/bold] \x1b[1m")
    assert text.plain == "[bold]x[/bold] ␛[1m"
    assert not text.spans
    assert sanitize_block("a\x1b\nb") == "a␛\nb"


# ---------------------------------------------------------------- formatting


def test_formatting() -> None:
    now = 1_000_000 * NS
    assert fmt.ago(now - 2 * NS, now) == "now"
    assert fmt.ago(now - 42 * NS, now) == "42s"
    assert fmt.ago(now - 5 * 60 * NS, now) == "5m"
    assert fmt.ago(now - 3 * 3600 * NS, now) == "3h"
    assert fmt.ago(now - 2 * 86400 * NS, now) == "2d"
    assert fmt.ago(None, now) == "–"
    assert fmt.duration(int(21.6 * NS)) == "21.6s"
    assert fmt.duration(185 * NS) == "3m05s"
    assert fmt.duration(3720 * NS) == "1h02m"
    assert fmt.duration(2 * 86400 * NS + 3 * 3600 * NS) == "2d03h"
    assert [fmt.tokens(n) for n in (0, 999, 1234, 9949, 9999, 12_345, 1_500_000)] == [
        "0",
        "999",
        "1.2k",
        "9.9k",
        "10k",
        "12k",
        "1.5M",
    ]
    assert [fmt.cost(c) for c in (0, 0.0123, 1.234, 123.4)] == ["–", "$0.012", "$1.23", "$123"]
    assert fmt.short_id("run-ee46855aca9f") == "ee46855a"
    assert fmt.short_id("0f8e1c2a-uuid") == "0f8e1c2a"


def test_live_duration_grows_for_running_runs_only() -> None:
    now = 1_000 * NS
    running = Task("r", status=RunStatus.RUNNING, started_at=now - 10 * NS, last_seen=now - 5 * NS)
    ended = Task("e", status=RunStatus.FAILED, started_at=now - 10 * NS, ended_at=now - 8 * NS)
    assert fmt.live_duration(running, now) == 10 * NS
    assert fmt.live_duration(running, now + NS) == 11 * NS
    assert fmt.live_duration(ended, now + NS) == 2 * NS


def test_status_styles_are_ansi_colours_for_16_colour_terminals() -> None:
    for glyph, style in fmt.STATUS_LOOK.values():
        assert len(glyph) == 1
        color = Style.parse(style).color
        assert color is not None and color.type == ColorType.STANDARD


# ---------------------------------------------------------------- time ranges


def test_time_ranges() -> None:
    assert [tr.label for tr in PRESETS] == ["15m", "1h", "6h", "24h", "7d"]
    assert parse_duration("90m") == 5400
    assert parse_duration("2h30m") == 9000
    assert parse_duration(" 1.5d ") == 1.5 * 86400
    assert duration_label(5400) == "1h30m"
    for bad in ("", "abc", "10", "5s", "1y", "2h junk", "100d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert TimeRange(3600).window(10_000 * NS) == (6_400 * NS, 10_000 * NS)


# ---------------------------------------------------------------- key map


def test_binding_ids_are_unique_and_every_scope_is_bound() -> None:
    ids = [k.id for k in KEYS]
    assert len(ids) == len(set(ids))
    for scope in {k.scope for k in KEYS}:
        got = {b.id for b in bindings_for(scope)}
        assert {k.id for k in KEYS if k.scope == scope} <= got


def test_help_lists_every_binding_with_remaps() -> None:
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(help_table({"triage.ack": "A"}))
    out = console.export_text()
    for k in KEYS:
        assert k.id in out
    ack_line = next(line for line in out.splitlines() if "triage.ack" in line)
    assert ack_line.split()[0] == "A"
    assert key_label("ctrl+d,pagedown") == "^d/pgdn"
    assert key_label("question_mark") == "?"
    assert effective_key(KEYS[0], {}) == KEYS[0].key
    assert unknown_ids({"triage.ack": "A", "nope.nothing": "z"}) == ["nope.nothing"]


# ---------------------------------------------------------------- task query


def test_task_query_filters() -> None:
    q = TaskQuery()
    assert q.to_filter(5).since_ns == 5 and q.to_filter(5).statuses == ()
    mine = TaskQuery(mine=True).to_filter(None)
    assert mine.triage == (TriageState.NEW,)
    assert set(mine.statuses) == {RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.STALLED}
    pat = TaskQuery(run_ids=("a", "b"), pattern_label="#1 x").to_filter(5)
    assert pat.run_ids == ("a", "b") and pat.since_ns is None
    assert TaskQuery(agent="coder", text="x").chips() == ["/x", "agent=coder"]
    sorts = [TaskQuery().next_sort().sort, TaskQuery().next_sort().next_sort().sort]
    assert sorts == [TaskSort.NEWEST, TaskSort.OLDEST]


# ---------------------------------------------------------------- display lines


def _entry(line: str, **labels: str) -> TailEntry:
    return TailEntry(labels, LogEntry(0, line, {"run_id": "run-abcdef123456"}))


def test_line_maker_compacts_json_and_keeps_the_raw_line() -> None:
    maker = LineMaker(agent_label="agent", level_label="level", run_id_field="run_id")
    line = (
        '{"ts":"2025-01-01T00:00:00Z","level":"error","event":"error","agent":"coder",'
        '"run_id":"run-abcdef123456","msg":"boom [red]x[/]","error.type":"KeyError","n":3}'
    )
    out = maker.make(_entry(line, agent="coder", level="error"))
    assert out.body == "error boom [red]x[/] error.type=KeyError n=3"
    assert out.raw.startswith('{"ts"') and out.original == out.raw
    assert out.is_error and out.run_id == "run-abcdef123456"
    assert "coder" in out.prefix and "abcdef" in out.prefix
    plain = maker.make(_entry("plain \x1b[31m text", agent="coder"))
    assert plain.body == "plain ␛[31m text" and plain.raw == ""


def test_levels() -> None:
    assert level_of("ERROR", "") == "error"
    assert level_of("", '{"level":"warn"}') == "warn"
    assert level_of("", "ts=1 level=debug msg=x") == "debug"
    assert level_of("", "Traceback: FATAL oops") == "error"
    assert level_of("", "all good") == "info"
    assert marker_line("⚠ \x1b dropped").body == "⚠ ␛ dropped"


# ---------------------------------------------------------------- status


def test_source_status() -> None:
    st = SourceStatus()
    assert st.state == HealthState.OK and not st.degraded
    assert st.fail("tasks", "database is locked")
    assert not st.fail("tasks", "database is locked")
    assert st.degraded and st.reasons() == ["tasks: database is locked"]
    assert st.succeed("tasks", 5) and st.last_good_ns == 5 and not st.degraded
    assert st.set_probes([SourceHealth("logs", "embedded", HealthState.DOWN, reason="gone")])
    assert st.state == HealthState.DOWN and st.reasons() == ["logs: gone"]
    assert describe(ValueError("bad\nmore")) == "ValueError: bad"


# ---------------------------------------------------------------- app log files


def test_daily_error_log_file(tmp_path: Path) -> None:
    handler = DailyFileHandler(tmp_path / "logs")
    logger = logging.getLogger("agentlog.test.daily")
    logger.addHandler(handler)
    try:
        logger.error("the tail failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    name = f"error-{time.strftime('%Y-%m-%d')}.log"
    assert "the tail failed" in (tmp_path / "logs" / name).read_text()


def test_file_logging_replaces_terminal_handlers(tmp_path: Path) -> None:
    root = logging.getLogger()
    stream = logging.StreamHandler()
    root.addHandler(stream)
    handler = setup_file_logging(tmp_path)
    try:
        assert stream not in root.handlers
        logging.getLogger("agentlog.tui").warning("to the file")
    finally:
        root.removeHandler(handler)
        handler.close()
    assert "to the file" in next((tmp_path / "logs").glob("error-*.log")).read_text()


# ---------------------------------------------------------------- layering

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_BACKEND = {"backend.facade", "backend.models", "backend.config", "backend.errors"}
ALLOWED_BACKEND_IN_APP = {"backend.demo.fleet"}  # `--demo` runs the fleet in-process
NETWORK = {"socket", "httpx", "httpx2", "websockets", "asyncpg", "redis", "urllib", "http"}


def test_tui_reaches_the_backend_only_through_its_facade() -> None:
    import ast

    offenders: dict[str, list[str]] = {}
    for path in (ROOT / "tui").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        mods: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module)
        allowed = ALLOWED_BACKEND | (ALLOWED_BACKEND_IN_APP if path.name == "app.py" else set())
        bad = sorted(
            m
            for m in mods
            if (m.startswith("backend") and m not in allowed) or m.split(".")[0] in NETWORK
        )
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}
