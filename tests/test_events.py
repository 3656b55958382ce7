"""The data contract: log line (+ labels, structured metadata) -> AgentEvent."""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
import pytest

from backend.events import FieldNames, extract_event, parse_line_fields
from backend.models import AgentEvent, EventKind

TS = 1_700_000_000_000_000_000


def ev(
    line: str | Mapping[str, object],
    labels: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    names: FieldNames | None = None,
) -> AgentEvent | None:
    text = line if isinstance(line, str) else orjson.dumps(line).decode()
    if names is None:
        return extract_event(TS, text, labels or {}, metadata or {})
    return extract_event(TS, text, labels or {}, metadata or {}, names)


def must(event: AgentEvent | None) -> AgentEvent:
    assert event is not None
    return event


# ---------------------------------------------------------------- parse_line_fields


def test_json_nested_objects_are_reachable_by_dotted_keys() -> None:
    fields = parse_line_fields('{"error": {"type": "X", "detail": {"code": 7}}, "a": 1}')
    assert fields is not None
    assert fields["error.type"] == "X"
    assert fields["error.detail.code"] == 7
    assert fields["error"] == {"type": "X", "detail": {"code": 7}}
    assert fields["a"] == 1


def test_json_literal_dotted_key_wins_over_nested() -> None:
    fields = parse_line_fields('{"error.type": "Literal", "error": {"type": "Nested"}}')
    assert fields is not None and fields["error.type"] == "Literal"


def test_json_with_leading_space_and_non_object_json() -> None:
    assert parse_line_fields('   {"a": "b"}') == {"a": "b"}
    assert parse_line_fields("[1, 2, 3]") is None
    assert parse_line_fields('"just a string"') is None


def test_broken_json_falls_back_to_logfmt_or_text() -> None:
    assert parse_line_fields('{"a": ') is None
    assert parse_line_fields("{oops} a=1 b=2") == {"a": "1", "b": "2"}


def test_logfmt_with_quoted_values_and_escapes() -> None:
    fields = parse_line_fields(
        'level=info msg="hello world" run_id=r1 q="say \\"hi\\"" empty= path=/a/b?c=d'
    )
    assert fields == {
        "level": "info",
        "msg": "hello world",
        "run_id": "r1",
        "q": 'say "hi"',
        "empty": "",
        "path": "/a/b?c=d",
    }


def test_logfmt_unterminated_quote_takes_rest_of_line() -> None:
    assert parse_line_fields('a=1 msg="unterminated value') == {
        "a": "1",
        "msg": "unterminated value",
    }


@pytest.mark.parametrize(
    "line",
    [
        "",
        "plain text with no pairs",
        "GET /api?x=1 took 200 ms",  # one pair among many words: prose, not logfmt
        "x = 1",
    ],
)
def test_plain_text_is_none(line: str) -> None:
    assert parse_line_fields(line) is None


def test_mostly_pairs_is_logfmt() -> None:
    assert parse_line_fields("level=warn msg=slow retrying") == {"level": "warn", "msg": "slow"}


# ---------------------------------------------------------------- run id


def test_no_run_id_is_none() -> None:
    assert ev({"event": "step", "agent": "a"}) is None
    assert ev("plain text", labels={"agent": "a"}) is None
    assert ev({"run_id": ""}) is None


def test_run_id_precedence_line_label_metadata_trace() -> None:
    everything = {"run_id": "label"}
    meta = {"run_id": "meta", "trace_id": "mtrace"}
    assert must(ev({"run_id": "line", "trace_id": "t"}, everything, meta)).run_id == "line"
    assert must(ev({"trace_id": "t"}, everything, meta)).run_id == "label"
    assert must(ev({"trace_id": "t"}, {}, meta)).run_id == "meta"
    assert must(ev({"trace_id": "t"}, {}, {"trace_id": "mtrace"})).run_id == "t"
    assert must(ev("plain text", {}, {"trace_id": "mtrace"})).run_id == "mtrace"


def test_plain_text_line_with_run_id_label_is_log() -> None:
    event = must(ev("starting up", labels={"run_id": "r1", "agent": "a1"}))
    assert (event.run_id, event.kind, event.agent, event.ts) == ("r1", EventKind.LOG, "a1", TS)


def test_configured_run_id_name_overrides_primary() -> None:
    names = FieldNames(run_id="request_id")
    assert must(ev({"request_id": "q1"}, names=names)).run_id == "q1"
    assert must(ev({}, labels={"request_id": "q2"}, names=names)).run_id == "q2"
    assert must(ev({}, metadata={"request_id": "q3"}, names=names)).run_id == "q3"
    # The replaced primary name is no longer read; synonyms still are.
    assert ev({"run_id": "r1"}, names=names) is None
    assert must(ev({"trace_id": "t", "run_id": "r1"}, names=names)).run_id == "t"


def test_numeric_run_id_becomes_text() -> None:
    assert must(ev({"run_id": 42})).run_id == "42"


# ---------------------------------------------------------------- agent, level, kind


def test_agent_precedence() -> None:
    line = {"run_id": "r", "agent": "line-agent", "service.name": "line-svc"}
    assert must(ev(line, {"agent": "label"}, {"service_name": "m"})).agent == "label"
    assert must(ev(line, {"service_name": "lsvc"}, {"service_name": "m"})).agent == "lsvc"
    assert must(ev(line, {}, {"service.name": "m"})).agent == "m"
    assert must(ev(line)).agent == "line-svc"
    assert must(ev({"run_id": "r", "agent": "line-agent"})).agent == "line-agent"
    # Nested OTel resource attribute reached by its dotted name.
    assert must(ev({"run_id": "r", "service": {"name": "nested"}})).agent == "nested"


def test_configured_agent_name() -> None:
    names = FieldNames(agent="bot")
    assert must(ev({"run_id": "r"}, labels={"bot": "b1"}, names=names)).agent == "b1"
    assert must(ev({"run_id": "r", "bot": "b2"}, names=names)).agent == "b2"


def test_level_precedence_and_lowercase() -> None:
    assert must(ev({"run_id": "r", "level": "WARN"}, {"level": "info"})).level == "warn"
    assert must(ev({"run_id": "r"}, {"level": "Info"})).level == "info"
    assert must(ev({"run_id": "r", "severity_text": "DEBUG"})).level == "debug"
    assert must(ev({"run_id": "r"}, {}, {"detected_level": "error"})).level == "error"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("run.start", EventKind.RUN_START),
        ("run.end", EventKind.RUN_END),
        ("step", EventKind.STEP),
        ("tool.call", EventKind.TOOL_CALL),
        ("llm.call", EventKind.LLM_CALL),
        ("error", EventKind.ERROR),
        ("log", EventKind.LOG),
        ("TOOL_CALL", EventKind.TOOL_CALL),
        ("run-start", EventKind.RUN_START),
        ("something.else", EventKind.LOG),
    ],
)
def test_event_kinds(name: str, kind: EventKind) -> None:
    assert must(ev({"run_id": "r", "event": name})).kind is kind


def test_missing_event_is_log() -> None:
    assert must(ev({"run_id": "r", "msg": "hi"})).kind is EventKind.LOG


@pytest.mark.parametrize(
    "line",
    [
        {"run_id": "r", "level": "ERROR", "msg": "boom"},
        {"run_id": "r", "level": "fatal"},
        {"run_id": "r", "level": "critical"},
        {"run_id": "r", "error": {"type": "ValueError"}},
        {"run_id": "r", "exception.type": "KeyError"},
    ],
)
def test_error_signals_make_an_error_event(line: dict[str, object]) -> None:
    assert must(ev(line)).kind is EventKind.ERROR


def test_explicit_event_beats_error_level() -> None:
    assert must(ev({"run_id": "r", "event": "step", "level": "error"})).kind is EventKind.STEP


def test_error_label_level_on_plain_text_is_error_with_line_as_message() -> None:
    event = must(ev("  connection reset by peer ", {"run_id": "r", "level": "error"}))
    assert event.kind is EventKind.ERROR
    assert event.error_message == "connection reset by peer"


def test_error_level_line_uses_msg_as_message() -> None:
    event = must(ev({"run_id": "r", "level": "error", "msg": "upstream 502"}))
    assert (event.error_type, event.error_message) == ("", "upstream 502")


def test_logfmt_line() -> None:
    line = (
        "run_id=r7 event=llm.call model=gpt-4o "
        'input_tokens=12 output_tokens=3 cost_usd=0.5 msg="ok"'
    )
    event = must(ev(line, labels={"agent": "planner"}))
    assert (event.kind, event.model, event.input_tokens, event.output_tokens) == (
        EventKind.LLM_CALL,
        "gpt-4o",
        12,
        3,
    )
    assert event.cost_usd == 0.5
    assert event.agent == "planner"


# ---------------------------------------------------------------- payload fields


def test_llm_call_primary_names() -> None:
    event = must(
        ev(
            {
                "run_id": "r",
                "event": "llm.call",
                "model": "m1",
                "input_tokens": 100,
                "output_tokens": 20,
                "cost_usd": 0.0125,
            }
        )
    )
    assert (event.model, event.input_tokens, event.output_tokens, event.cost_usd) == (
        "m1",
        100,
        20,
        0.0125,
    )


def test_llm_call_otel_genai_names_nested() -> None:
    line = {
        "run_id": "r",
        "event": "llm.call",
        "gen_ai": {
            "request": {"model": "req-model"},
            "response": {"model": "resp-model"},
            "usage": {"input_tokens": 7, "output_tokens": 9},
        },
    }
    event = must(ev(line))
    assert (event.model, event.input_tokens, event.output_tokens) == ("req-model", 7, 9)


def test_response_model_and_prompt_completion_tokens() -> None:
    line = {
        "run_id": "r",
        "gen_ai.response.model": "resp",
        "prompt_tokens": "11",
        "completion_tokens": 4.0,
    }
    event = must(ev(line))
    assert (event.model, event.input_tokens, event.output_tokens) == ("resp", 11, 4)


@pytest.mark.parametrize(
    ("tokens", "cost"),
    [("abc", "x"), (None, None), ([1], {"a": 1}), (-5, -1.0), (True, "nan"), ("1e999", "inf")],
)
def test_bad_numbers_are_zero(tokens: object, cost: object) -> None:
    line = {"run_id": "r", "event": "llm.call", "input_tokens": tokens, "cost_usd": cost}
    event = must(ev(line))
    assert event.input_tokens == 0
    assert event.cost_usd == 0.0


def test_numeric_strings_are_numbers() -> None:
    line = {"run_id": "r", "input_tokens": " 12 ", "output_tokens": "3.9", "cost_usd": "0.25"}
    event = must(ev(line))
    assert (event.input_tokens, event.output_tokens, event.cost_usd) == (12, 3, 0.25)


def test_error_fields_and_synonyms() -> None:
    nested = must(ev({"run_id": "r", "event": "error", "error": {"type": "T", "message": "m"}}))
    assert (nested.error_type, nested.error_message) == ("T", "m")
    flat = must(ev({"run_id": "r", "error.type": "T2", "error.message": "m2"}))
    assert (flat.kind, flat.error_type, flat.error_message) == (EventKind.ERROR, "T2", "m2")
    exc = must(ev({"run_id": "r", "exception": {"type": "KeyError", "message": "'k'"}}))
    assert (exc.error_type, exc.error_message) == ("KeyError", "'k'")
    as_string = must(ev({"run_id": "r", "event": "error", "error": "disk full"}))
    assert (as_string.error_type, as_string.error_message) == ("", "disk full")


def test_status_only_on_run_end_lowercased() -> None:
    assert must(ev({"run_id": "r", "event": "run.end", "status": "FAILED"})).status == "failed"
    assert must(ev({"run_id": "r", "event": "step", "status": "ok"})).status == ""


def test_task_tool_step() -> None:
    event = must(ev({"run_id": "r", "task_name": "triage", "tool": {"name": "grep"}, "step": 3}))
    assert (event.task, event.tool, event.step) == ("triage", "grep", "3")
    event = must(ev({"run_id": "r", "task": "t1", "gen_ai.tool.name": "search", "tool": "web"}))
    assert (event.task, event.tool) == ("t1", "web")
    assert must(ev({"run_id": "r", "gen_ai.tool.name": "search"})).tool == "search"


def test_every_configured_name_is_used() -> None:
    names = FieldNames(
        run_id="rid",
        agent="who",
        event="kind",
        level="lvl",
        status="outcome",
        model="llm",
        input_tokens="tin",
        output_tokens="tout",
        cost_usd="usd",
        task="job",
        error_type="err_kind",
        error_message="err_text",
        tool="instrument",
        step="n",
    )
    end = must(ev({"rid": "r", "who": "a", "kind": "run.end", "outcome": "timeout"}, names=names))
    assert (end.run_id, end.agent, end.kind, end.status) == ("r", "a", EventKind.RUN_END, "timeout")
    line = {
        "rid": "r",
        "kind": "llm.call",
        "lvl": "WARN",
        "llm": "m",
        "tin": 5,
        "tout": 6,
        "usd": 0.1,
        "job": "j",
        "err_kind": "E",
        "err_text": "msg",
        "instrument": "t",
        "n": "s1",
    }
    event = must(ev(line, names=names))
    assert (event.level, event.model, event.input_tokens, event.output_tokens) == (
        "warn",
        "m",
        5,
        6,
    )
    assert (event.cost_usd, event.task, event.error_type, event.error_message) == (
        0.1,
        "j",
        "E",
        "msg",
    )
    assert (event.tool, event.step) == ("t", "s1")
    assert must(ev({"rid": "r", "err_kind": "E"}, names=names)).kind is EventKind.ERROR


def test_extraction_is_fast() -> None:
    line = orjson.dumps(
        {
            "ts": "2024-01-01T00:00:00Z",
            "run_id": "run-123",
            "event": "llm.call",
            "level": "info",
            "model": "gpt-4o",
            "input_tokens": 1000,
            "output_tokens": 200,
            "cost_usd": 0.01,
            "msg": "called the model",
        }
    ).decode()
    labels = {"agent": "planner", "env": "prod"}
    n = 20_000
    start = time.perf_counter()
    for i in range(n):
        extract_event(TS + i, line, labels, {})
    per_line_us = (time.perf_counter() - start) / n * 1e6
    assert per_line_us < 50, f"{per_line_us:.1f} µs per line"
