"""Compress a run's log lines to a token budget for a model prompt.

`compress_logs(lines, budget_tokens)` keeps what a reader needs to diagnose a run and drops
repetition:

1. **Common fields.** Fields with the same value in every JSON line (run id, agent, task...) are
   stated once in the header and removed from each line.
2. **Templates with counts.** Lines are mined into templates (`backend.patterns.mine`, the same
   masking and miner as failure patterns); a template seen twice or more is listed once as
   ``37x L12 <template>`` (count, first line number, template with ``<*>`` for variable parts).
3. **Lines kept**, in this priority order while the budget lasts:
   a. the first and the last line;
   b. the first occurrence of every distinct error (error level, an `error` event, an error type
      or message field, or plain text that looks like an error; distinct = same masked
      "type: message"), in order of first occurrence, marked ``[error]`` or ``[error, 37x]``;
   c. the other first and last `edge_lines` lines, and the first and last step lines (events
      step, tool.call, llm.call);
   d. the template list, most frequent first (at most `max_templates` rows);
   e. other lines until the budget is full, round-robin over templates: the first line of each
      template (rarest template first), then the second of each, and so on.

   Kept lines are printed in log order as ``L<n> <line>`` (n is 1-based), one per line (newlines
   inside an entry become ``\\n``). JSON lines print their level, event and message fields
   first and their timestamp last, so a line cut at `max_line_chars` (or at 1/8 of a small
   budget, but never under 120 characters) keeps what happened.

**Token estimate:** one token per 4 characters, rounded up (`estimate_tokens`). Real tokenizers
give ~4 characters per token on English and fewer on punctuation-heavy JSON, so the budget is
approximate by design; what is exact is that the text never exceeds ``4 * budget_tokens``
characters.

The result is deterministic (same lines and budget, same text) and carries the sha256 of its
text, which keys stored summaries.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..patterns import mask, mine

__all__ = ["CHARS_PER_TOKEN", "CompressedLogs", "compress_logs", "estimate_tokens"]

CHARS_PER_TOKEN = 4

_ERROR_LEVELS = frozenset({"error", "err", "fatal", "critical", "crit", "panic", "emerg", "alert"})
_STEP_EVENTS = frozenset({"step", "tool.call", "llm.call"})
_LOOKS_LIKE_ERROR = re.compile(
    r"(?i)\b(?:error|exception|traceback|fatal|panic|failed|failure)\b"
    r"|\b[A-Z]\w*(?:Error|Exception):"
)
_NEWLINE = re.compile(r"\r?\n")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HEADER_RESERVE = 160  # characters kept free for the header line, written last
# JSON fields printed first (what happened), the timestamp last: a cut line keeps the message
_FIRST_KEYS = (
    "level", "event", "error.type", "error.message", "exception.type", "exception.message",
    "msg", "message", "status", "tool", "args", "step",
)  # fmt: skip
_LAST_KEYS = ("ts", "time", "timestamp")


def estimate_tokens(text: str) -> int:
    """Tokens of `text` by the 4-characters-per-token rule, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


@dataclass(frozen=True, slots=True)
class CompressedLogs:
    text: str
    sha256: str  # hex digest of `text` (UTF-8)
    total_lines: int
    kept_lines: int  # input lines printed in full (or cut) under "Lines"
    templates: int  # repeated templates listed
    error_groups: int  # distinct errors found (each one's first line is kept if it fit)
    tokens: int  # estimate_tokens(text)


@dataclass(slots=True)
class _Line:
    index: int
    text: str  # normalised: common fields removed, one physical line
    fields: dict[str, Any] | None


def _one_line(text: str) -> str:
    text = text.rstrip()
    if text.isprintable():  # the common case, checked in C
        return text
    return _CONTROL.sub(" ", _NEWLINE.sub("\\\\n", text))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"...[+{len(text) - limit} chars]"
    return text[: max(0, limit - len(marker))] + marker


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def _parse(lines: Sequence[str]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for raw in lines:
        obj: Any = None
        s = raw.strip()
        if s.startswith("{"):
            try:
                obj = orjson.loads(s)
            except orjson.JSONDecodeError:
                obj = None
        out.append(obj if isinstance(obj, dict) else None)
    return out


def _common_fields(parsed: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    dicts = [d for d in parsed if d is not None]
    if len(dicts) < 2:
        return {}
    common = {k: v for k, v in dicts[0].items() if _scalar(v)}
    for d in dicts[1:]:
        common = {k: v for k, v in common.items() if k in d and d[k] == v}
        if not common:
            break
    return common


def _reorder(d: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
    out = {k: d[k] for k in _FIRST_KEYS if k in d and k not in drop}
    out.update(
        (k, v) for k, v in d.items() if k not in out and k not in drop and k not in _LAST_KEYS
    )
    out.update((k, d[k]) for k in _LAST_KEYS if k in d and k not in drop)
    return out


def _is_error(raw: str, d: dict[str, Any] | None) -> bool:
    if d is None:
        return bool(_LOOKS_LIKE_ERROR.search(raw))
    if str(d.get("event", "")) == "run.end":
        return False  # the run's closing line; its cause was logged before
    level = str(d.get("level", d.get("severity_text", d.get("severity", "")))).lower()
    return (
        level in _ERROR_LEVELS
        or d.get("event") == "error"
        or any(k in d for k in ("error.type", "error.message", "exception.type"))
    )


def _error_key(raw: str, d: dict[str, Any] | None) -> str:
    if d is None:
        return mask(raw.strip()[:500])
    etype = str(d.get("error.type") or d.get("exception.type") or "")
    msg = d.get("error.message") or d.get("exception.message") or d.get("msg") or d.get("message")
    text = str(msg) if msg is not None else raw
    return mask(f"{etype}: {text}"[:500])


def compress_logs(
    lines: Sequence[str],
    budget_tokens: int,
    *,
    edge_lines: int = 3,
    max_line_chars: int = 800,
    max_templates: int = 40,
) -> CompressedLogs:
    """Compress `lines` (oldest first) to at most `budget_tokens`; see the module docstring."""
    budget = max(1, budget_tokens) * CHARS_PER_TOKEN
    line_limit = max(120, min(max_line_chars, budget // 8))  # small budgets: shorter lines
    n = len(lines)
    parsed = _parse(lines)
    common = _common_fields(parsed)
    items: list[_Line] = []
    for i, (raw, d) in enumerate(zip(lines, parsed, strict=True)):
        text = raw if d is None else orjson.dumps(_reorder(d, common)).decode()
        items.append(_Line(i, _one_line(text), d))

    ids, clusters = mine([it.text for it in items]) if items else ([], {})
    first_of: dict[int, int] = {}
    for i, cid in enumerate(ids):
        first_of.setdefault(cid, i)

    errors: dict[str, list[int]] = {}  # key -> [count, first index]
    for it in items:
        if _is_error(lines[it.index], it.fields):
            key = _error_key(lines[it.index], it.fields)
            seen = errors.get(key)
            if seen is None:
                errors[key] = [1, it.index]
            else:
                seen[0] += 1
    error_count = {first: count for count, first in errors.values()}

    used = _HEADER_RESERVE
    out_common = ""
    if common:
        out_common = _cut("Every JSON line also has: " + orjson.dumps(common).decode(), 600)
        used += len(out_common) + 1

    kept: dict[int, str] = {}

    def render(i: int) -> str:
        tag = ""
        if i in error_count:
            c = error_count[i]
            tag = "[error] " if c == 1 else f"[error, {c}x] "
        return _cut(f"L{i + 1} {tag}{items[i].text}", line_limit)

    lines_title = "Lines shown (L<n> = line number in the run):"

    def keep(i: int) -> bool:
        nonlocal used
        if i in kept:
            return True
        row = render(i)
        cost = len(row) + 1 + (0 if kept else len(lines_title) + 1)
        if used + cost > budget:
            return False
        kept[i] = row
        used += cost
        return True

    # a. the first and the last line
    if n:
        keep(0)
        keep(n - 1)
    # b. the first occurrence of every distinct error, in log order
    for _count, first in sorted(errors.values(), key=lambda e: e[1]):
        keep(first)
    # c. the other first and last lines, the first and last step lines
    edges = list(range(min(edge_lines, n))) + list(range(max(0, n - edge_lines), n))
    steps = [it.index for it in items if it.fields and it.fields.get("event") in _STEP_EVENTS]
    if steps:
        edges += [steps[0], steps[-1]]
    for i in edges:
        keep(i)
    # d. templates seen more than once, most frequent first
    repeated = sorted(
        (c for c in clusters.values() if c.size > 1), key=lambda c: (-c.size, first_of[c.id])
    )[:max_templates]
    tmpl_title = "Repeated lines as templates (count, first line, template; <*> = variable part):"
    rows: list[str] = []
    for c in repeated:
        row = _cut(f"{c.size}x L{first_of[c.id] + 1} {c.template}", line_limit)
        cost = len(row) + 1 + (0 if rows else len(tmpl_title) + 1)
        if used + cost <= budget:
            rows.append(row)
            used += cost
    # e. fill, round-robin over templates: the first line of every template (rarest template
    # first), then the second line of every template, ...
    size_of = {cid: c.size for cid, c in clusters.items()}
    so_far: dict[int, int] = {}
    rank = []
    for cid in ids:
        rank.append(so_far.get(cid, 0))
        so_far[cid] = rank[-1] + 1
    for i in sorted(range(n), key=lambda i: (rank[i], size_of[ids[i]], i)):
        if budget - used < 16:
            break
        keep(i)

    header = (
        f"{n} log lines, {len(rows)} repeated templates, {len(errors)} distinct errors; "
        f"{len(kept)} lines shown."
    )
    parts = [header]
    if out_common:
        parts.append(out_common)
    if rows:
        parts += [tmpl_title, *rows]
    if kept:
        parts += [lines_title, *(kept[i] for i in sorted(kept))]
    text = "\n".join(parts)
    if len(text) > budget:  # only with budgets too small for the header itself
        text = text[:budget]
    return CompressedLogs(
        text=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        total_lines=n,
        kept_lines=len(kept),
        templates=len(rows),
        error_groups=len(errors),
        tokens=estimate_tokens(text),
    )
