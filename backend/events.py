"""The data contract: one log line (plus its labels and structured metadata) -> one AgentEvent.

See DESIGN.md, "Logs and runs: the data contract". Lines are JSON (nested objects are also reachable
by dotted keys, so `{"error": {"type": "X"}}` answers `error.type`), logfmt, or plain text. Field
names are configurable through `FieldNames`; a configured name *replaces* the primary name (with
`run_id="request_id"` a bare `run_id` field is no longer read), while the OpenTelemetry / GenAI
synonyms from the table (`trace_id`, `service.name`, `gen_ai.*`, `exception.*`, ...) are always
accepted after it.

Decisions where the table is silent:
- `event` values are matched case-insensitively, with `_`/`-` accepted for `.` (`tool_call`).
- A line with no `event`, or an `event` this contract does not know, is an ERROR when its level is
  error-like (error, err, fatal, critical, crit, panic, alert, emerg) or it carries an error type;
  otherwise it is a LOG. An explicit `event: "log"` stays a LOG.
- An ERROR with no error fields takes its message from `msg` / `message`, or from the whole line
  (plain text), capped at 500 chars, so the run's last error is never blank.
- `level` and `status` are lower-cased; `status` is only read on run.end.
- Numbers that are not numbers (tokens "abc", cost "x"), negatives, NaN and infinities count as 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from .models import AgentEvent, EventKind

__all__ = ["FieldNames", "extract_event", "parse_line_fields"]


@dataclass(frozen=True, slots=True)
class FieldNames:
    """The primary field (and label) names of the data contract; override to match your logs."""

    run_id: str = "run_id"
    agent: str = "agent"
    event: str = "event"
    level: str = "level"
    status: str = "status"
    model: str = "model"
    input_tokens: str = "input_tokens"
    output_tokens: str = "output_tokens"
    cost_usd: str = "cost_usd"
    task: str = "task"
    error_type: str = "error.type"
    error_message: str = "error.message"
    tool: str = "tool"
    step: str = "step"


DEFAULT_NAMES = FieldNames()

# ---------------------------------------------------------------- line parsing

# One logfmt token: a key, optionally `=` and a value (quoted with backslash escapes, or bare).
# An unterminated quote takes the rest of the line rather than failing the whole line.
_LOGFMT_TOKEN = re.compile(r'([^\s="]+)(?:=("(?:[^"\\]|\\.)*(?:"|\\?$)|[^\s]*))?|(\S+)')


def _flatten_into(out: dict[str, object], prefix: str, obj: dict[str, object]) -> None:
    for key, value in obj.items():
        dotted = f"{prefix}.{key}"
        # A literal dotted key in the line ({"error.type": ...}) wins over a nested one.
        out.setdefault(dotted, value)
        if isinstance(value, dict):
            _flatten_into(out, dotted, value)


def _parse_json(line: str) -> dict[str, object] | None:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    # Only copy when there is something to flatten: most agent lines are flat.
    nested = [(k, v) for k, v in obj.items() if isinstance(v, dict)]
    if nested:
        for key, value in nested:
            _flatten_into(obj, key, value)
    return obj


def _unquote(raw: str) -> str:
    inner = raw[1:-1] if len(raw) >= 2 and raw.endswith('"') else raw[1:]
    if "\\" not in inner:
        return inner
    try:  # logfmt quoting is Go's strconv.Quote, which JSON string escapes cover
        value = orjson.loads(f'"{inner}"')
    except orjson.JSONDecodeError:
        return inner
    return value if isinstance(value, str) else inner


def _parse_logfmt(line: str) -> dict[str, object] | None:
    fields: dict[str, object] = {}
    pairs = 0
    others = 0
    for match in _LOGFMT_TOKEN.finditer(line):
        key, value, stray = match.group(1, 2, 3)
        if stray is not None or value is None:
            others += 1  # a plain word (or bare key): plain text counts against logfmt
            continue
        pairs += 1
        fields[key] = _unquote(value) if value.startswith('"') else value
    # "Mostly k=v": more pairs than stray words, so prose that mentions x=1 stays plain text.
    if pairs and pairs > others:
        return fields
    return None


def parse_line_fields(line: str) -> dict[str, object] | None:
    """The fields of a log line: a JSON object (plus dotted keys for nested objects), else logfmt
    pairs when the line is mostly `key=value` tokens, else None (plain text)."""
    stripped = line.lstrip()
    if stripped.startswith("{"):
        fields = _parse_json(stripped)
        if fields is not None:
            return fields
    if "=" not in line:  # cheap exit for plain text
        return None
    return _parse_logfmt(line)


# ---------------------------------------------------------------- value coercion


def _text(value: object) -> str:
    """A scalar as text; containers, null and booleans are not text values."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        return str(value)
    return ""


def _first(fields: Mapping[str, object] | None, keys: tuple[str, ...]) -> str:
    if not fields:
        return ""
    for key in keys:
        value = fields.get(key)
        if value is not None:
            text = _text(value)
            if text:
                return text
    return ""


def _first_value(fields: Mapping[str, object] | None, keys: tuple[str, ...]) -> object:
    if not fields:
        return None
    for key in keys:
        value = fields.get(key)
        if value is not None and value != "":
            return value
    return None


def _to_int(value: object) -> int:
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(0, value)
    number = _to_float(value)
    return int(number) if number < 2**63 else 0


def _to_float(value: object) -> float:
    if value is None or isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return 0.0
    else:
        return 0.0
    if math.isnan(number) or math.isinf(number) or number < 0:
        return 0.0
    return number


# ---------------------------------------------------------------- event extraction

_EVENT_KINDS: dict[str, EventKind] = {}
for _kind in EventKind:
    for _alias in {_kind.value, _kind.value.replace(".", "_"), _kind.value.replace(".", "-")}:
        _EVENT_KINDS[_alias] = _kind
_EVENT_KINDS.update(
    {
        "run.started": EventKind.RUN_START,
        "run.ended": EventKind.RUN_END,
        "run.finished": EventKind.RUN_END,
        "tool": EventKind.TOOL_CALL,
        "llm": EventKind.LLM_CALL,
    }
)

_MESSAGE_MAX = 500  # fallback error messages taken from msg / the plain line are capped

_ERROR_LEVELS = frozenset(
    {"error", "err", "fatal", "critical", "crit", "panic", "alert", "emerg", "emergency"}
)


@dataclass(frozen=True, slots=True)
class _Plan:
    """The lookup order for each meaning, precomputed once per FieldNames."""

    run_id: tuple[str, ...]
    agent_service: tuple[str, ...]
    level_line: tuple[str, ...]
    model: tuple[str, ...]
    input_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...]
    cost: tuple[str, ...]
    error_type: tuple[str, ...]
    error_message: tuple[str, ...]
    task: tuple[str, ...]
    tool: tuple[str, ...]


def _dedupe(*keys: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(keys))


_PLANS: dict[FieldNames, _Plan] = {}


def _plan(names: FieldNames) -> _Plan:
    plan = _PLANS.get(names)
    if plan is None:
        plan = _Plan(
            run_id=(names.run_id,),
            agent_service=("service_name", "service.name"),
            level_line=_dedupe(names.level, "severity_text"),
            model=_dedupe(names.model, "gen_ai.request.model", "gen_ai.response.model"),
            input_tokens=_dedupe(
                names.input_tokens,
                "gen_ai.usage.input_tokens",
                "prompt_tokens",
                "gen_ai.usage.prompt_tokens",
                "usage.input_tokens",
                "usage.prompt_tokens",
            ),
            output_tokens=_dedupe(
                names.output_tokens,
                "gen_ai.usage.output_tokens",
                "completion_tokens",
                "gen_ai.usage.completion_tokens",
                "usage.output_tokens",
                "usage.completion_tokens",
            ),
            cost=_dedupe(names.cost_usd, "gen_ai.usage.cost", "usage.cost"),
            error_type=_dedupe(names.error_type, "exception.type", "error.kind"),
            error_message=_dedupe(names.error_message, "exception.message"),
            task=_dedupe(names.task, "task_name", "task.name"),
            tool=_dedupe(names.tool, "tool.name", "gen_ai.tool.name"),
        )
        if len(_PLANS) < 64:  # FieldNames come from config: a handful at most
            _PLANS[names] = plan
    return plan


class _Unset:
    """Marks "not given" where None is a meaningful value (a plain-text line)."""


_UNSET = _Unset()


def extract_event(
    ts: int,
    line: str,
    labels: Mapping[str, str],
    metadata: Mapping[str, str],
    names: FieldNames = DEFAULT_NAMES,
    fields: dict[str, object] | _Unset | None = _UNSET,
) -> AgentEvent | None:
    """The AgentEvent a log line carries, or None when it names no run. `fields`: the line
    already parsed by `parse_line_fields` (a caller that parsed it passes it, to parse once)."""
    if isinstance(fields, _Unset):
        fields = parse_line_fields(line)
    plan = _plan(names)

    run_id = (
        _first(fields, plan.run_id)
        or labels.get(names.run_id, "")
        or metadata.get(names.run_id, "")
        or _first(fields, ("trace_id",))
        or metadata.get("trace_id", "")
    )
    if not run_id:
        return None

    agent = (
        labels.get(names.agent, "")
        or _first(labels, plan.agent_service)
        or _first(metadata, plan.agent_service)
        or _first(fields, plan.agent_service)
        or _first(fields, (names.agent,))
        or metadata.get(names.agent, "")
    )
    level = (
        _first(fields, plan.level_line)
        or labels.get(names.level, "")
        or metadata.get(names.level, "")
        or metadata.get("severity_text", "")
        or metadata.get("detected_level", "")
        or labels.get("detected_level", "")
    ).lower()

    error_type = _first(fields, plan.error_type)
    error_message = _first(fields, plan.error_message)
    if not error_message and fields:
        # `error` (or Go's `err`) as a plain string is the message; as an object it was flattened.
        bare = fields.get("error")
        error_message = bare if isinstance(bare, str) else _first(fields, ("err",))

    event_name = _first(fields, (names.event,)).strip().lower()
    kind = _EVENT_KINDS.get(event_name)
    if kind is None:
        kind = EventKind.ERROR if (level in _ERROR_LEVELS or error_type) else EventKind.LOG
    if kind is EventKind.ERROR and not (error_type or error_message):
        # An error line with no error fields still deserves a readable last error.
        error_message = (
            _first(fields, ("msg", "message")) if fields is not None else line.strip()
        )[:_MESSAGE_MAX]

    return AgentEvent(
        ts=ts,
        run_id=run_id,
        kind=kind,
        agent=agent,
        task=_first(fields, plan.task) or labels.get(names.task, ""),
        level=level,
        status=_first(fields, (names.status,)).lower() if kind is EventKind.RUN_END else "",
        model=_first(fields, plan.model),
        input_tokens=_to_int(_first_value(fields, plan.input_tokens)),
        output_tokens=_to_int(_first_value(fields, plan.output_tokens)),
        cost_usd=_to_float(_first_value(fields, plan.cost)),
        error_type=error_type,
        error_message=error_message,
        tool=_first(fields, plan.tool),
        step=_first(fields, (names.step,)),
    )
