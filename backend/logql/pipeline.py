"""The LogQL log pipeline: label matchers, line filters, parsers, label filters and formatting.

Everything is compiled once (`compile_pipeline`, `compile_matcher`) into closures, so the per-line
work in `Pipeline.process` is only the stages themselves. Semantics follow Loki:

- line filters are case-sensitive and see the line as changed by earlier `line_format` stages;
- `| json` flattens nested objects with `_`, skips arrays, writes numbers as written, booleans as
  true/false and null as ""; `| logfmt` skips malformed pairs unless `--strict`, and drops empty
  values unless `--keep-empty`;
- extracted names are sanitised to `[a-zA-Z0-9_]` (a leading digit gets a `_` prefix), and a name
  that clashes with an input label gets the suffix `_extracted`;
- a parser failure keeps the line and sets `__error__` / `__error_details__`; a failed number,
  duration or bytes conversion in a label filter keeps the line with `__error__=LabelFilterErr`;
  once `__error__` is set, only string label filters can still drop the line;
- a template reading a missing label renders "".

Regexes are RE2 syntax, translated to Python's `re` where the two differ (see `compile_regex`).
"""

from __future__ import annotations

import functools
import json
import operator
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import LogQLUnsupportedError, QueryError
from .ast import (
    CmpOp,
    DropLabels,
    JsonParser,
    KeepLabels,
    LabelAnd,
    LabelExpr,
    LabelFilter,
    LabelFormat,
    LabelOr,
    LineFilter,
    LineFormat,
    LogfmtParser,
    Matcher,
    Stage,
)
from .timefmt import parse_duration, try_parse_go_duration

__all__ = [
    "Pipeline",
    "Template",
    "compile_matcher",
    "compile_pipeline",
    "compile_regex",
    "compile_template",
    "parse_bytes",
    "parse_json_path",
    "pushdown_line_filters",
    "unquote_go_string",
]

ERROR_LABEL = "__error__"
ERROR_DETAILS_LABEL = "__error_details__"
_PRESERVE_ERROR_LABEL = "__preserve_error__"
_SPECIAL_LABELS = frozenset({ERROR_LABEL, ERROR_DETAILS_LABEL, _PRESERVE_ERROR_LABEL})
_DUPLICATE_SUFFIX = "_extracted"

JSON_PARSER_ERR = "JSONParserErr"
LOGFMT_PARSER_ERR = "LogfmtParserErr"
LABEL_FILTER_ERR = "LabelFilterErr"

Labels = dict[str, str]
LabelPredicate = Callable[[str | None], bool]
ProcessFn = Callable[[str, Labels], tuple[str, Labels] | None]
# A compiled stage: (line, working labels, input labels) -> new line, or None to drop the line.
# It may change the working labels in place; the input labels are only read (clash checks).
_StageFn = Callable[[str, Labels, Mapping[str, str]], str | None]


# ---------------------------------------------------------------- Go string literals


_SIMPLE_ESCAPES = {
    "a": 7,
    "b": 8,
    "f": 12,
    "n": 10,
    "r": 13,
    "t": 9,
    "v": 11,
    "\\": 92,
    '"': 34,
}
_HEX = frozenset("0123456789abcdefABCDEF")


def unquote_go_string(body: str) -> str:
    """Decode the inside of a Go interpreted string literal ("..." without the quotes).

    Raises ValueError(message, offset) for an invalid escape; `offset` is the index in `body`.
    Byte escapes (\\xhh, \\ooo) are bytes, as in Go, and the result is decoded as UTF-8.
    """
    if "\\" not in body:
        return body
    buf = bytearray()
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            j = body.find("\\", i)
            j = n if j < 0 else j
            buf += body[i:j].encode("utf-8", "surrogatepass")
            i = j
            continue
        if i + 1 >= n:
            raise ValueError("a string cannot end with a backslash", i)
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            buf.append(_SIMPLE_ESCAPES[e])
            i += 2
        elif e == "x":
            digits = body[i + 2 : i + 4]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise ValueError("\\x must be followed by two hex digits", i)
            buf.append(int(digits, 16))
            i += 4
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not set(digits) <= set("01234567") or int(digits, 8) > 255:
                raise ValueError("an octal escape needs three octal digits (\\000 to \\377)", i)
            buf.append(int(digits, 8))
            i += 4
        elif e in "uU":
            width = 4 if e == "u" else 8
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                raise ValueError(f"\\{e} must be followed by {width} hex digits", i)
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise ValueError(f"\\{e}{digits} is not a valid Unicode code point", i)
            buf += chr(code).encode("utf-8")
            i += 2 + width
        else:
            raise ValueError(f"unknown escape sequence \\{e}", i)
    return buf.decode("utf-8", "replace")


# ---------------------------------------------------------------- RE2 -> Python regexes


class _RegexSyntaxError(Exception):
    pass


_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
# RE2's Perl classes are ASCII-only; Python's are Unicode-aware, so spell them out.
_PERL_CLASSES = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\f\\r "}
_POSIX_CLASS = re.compile(r"\[:(\^?[a-z]+):\]")
_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*)(?:(-)([a-zA-Z]*))?([:)])")
_OCTAL = frozenset("01234567")
_RE_META = frozenset("\\.+*?()|[]{}^$")


class _Frame:
    """One open group while translating: flags switched on mid-group (`a(?i)b`) are re-opened
    as scoped groups, because Python only accepts global flags at the very start."""

    __slots__ = ("multiline", "off", "on", "scoped")

    def __init__(self, multiline: bool) -> None:
        self.scoped = 0
        self.on = ""
        self.off = ""
        self.multiline = multiline


def _flag_group(on: str, off: str) -> str:
    return "(?" + on + ("-" + off if off else "") + ":"


def _literal(code: int) -> str:
    if code > 0x10FFFF:
        raise _RegexSyntaxError(f"invalid escape: code point {code:#x} is out of range")
    return f"\\U{code:08x}"


def _translate_escape(p: str, i: int, in_class: bool) -> tuple[str, int]:
    n = len(p)
    if i + 1 >= n:
        raise _RegexSyntaxError("trailing backslash at end of expression")
    e = p[i + 1]
    if e in "dws":
        return (_PERL_CLASSES[e] if in_class else f"[{_PERL_CLASSES[e]}]"), i + 2
    if e in "DWS":
        if in_class:
            raise _RegexSyntaxError(f"\\{e} inside [...] is not supported here")
        return f"[^{_PERL_CLASSES[e.lower()]}]", i + 2
    if e in "bB" and not in_class:
        return f"(?a:\\{e})", i + 2
    if e == "A" and not in_class:
        return "\\A", i + 2
    if e == "z" and not in_class:
        return "\\Z", i + 2
    if e in "pP":
        raise _RegexSyntaxError(f"Unicode classes (\\{e}...) are not supported here")
    if e == "Q":
        end = p.find("\\E", i + 2)
        text = p[i + 2 :] if end < 0 else p[i + 2 : end]
        stop = n if end < 0 else end + 2
        return "".join(_literal(ord(ch)) for ch in text), stop
    if e == "x":
        if i + 2 < n and p[i + 2] == "{":
            close = p.find("}", i + 3)
            digits = p[i + 3 : close] if close > 0 else ""
            if not digits or not set(digits) <= _HEX:
                raise _RegexSyntaxError("invalid escape sequence \\x{...}")
            return _literal(int(digits, 16)), close + 1
        digits = p[i + 2 : i + 4]
        if len(digits) != 2 or not set(digits) <= _HEX:
            raise _RegexSyntaxError("invalid escape sequence \\x")
        return _literal(int(digits, 16)), i + 4
    if e in "123456789" and not (i + 2 < n and p[i + 2] in _OCTAL and e in _OCTAL):
        raise _RegexSyntaxError(f"backreferences (\\{e}) are not supported by RE2")
    if e in _OCTAL:  # \0, \0o, \0oo, \1o, \1oo ... (RE2's octal escapes)
        j = i + 2
        while j < n and j < i + 4 and p[j] in _OCTAL:
            j += 1
        return _literal(int(p[i + 1 : j], 8)), j
    if e in "afnrtv":
        return "\\" + e, i + 2
    if e.isascii() and e.isalnum():
        raise _RegexSyntaxError(f"invalid escape sequence \\{e}")
    return "\\" + e, i + 2  # escaped punctuation (or a non-ASCII character) is itself


def _translate_class(p: str, i: int) -> tuple[str, int]:
    n = len(p)
    out = ["["]
    j = i + 1
    if j < n and p[j] == "^":
        out.append("^")
        j += 1
    first = True
    while True:
        if j >= n:
            raise _RegexSyntaxError("missing closing ]")
        c = p[j]
        if c == "]":
            if not first:
                out.append("]")
                return "".join(out), j + 1
            out.append("\\]")
            j += 1
        elif c == "[" and (m := _POSIX_CLASS.match(p, j)) is not None:
            name = m.group(1)
            if name not in _POSIX_CLASSES:
                raise _RegexSyntaxError(f"invalid or unsupported character class [:{name}:]")
            out.append(_POSIX_CLASSES[name])
            j = m.end()
        elif c == "\\":
            piece, j = _translate_escape(p, j, in_class=True)
            out.append(piece)
        elif c in "[&~|":
            out.append("\\" + c)  # literal in RE2; Python warns about future set syntax
            j += 1
        else:
            out.append(c)
            j += 1
        first = False


def _after_quantifier(p: str, i: int, out: list[str]) -> int:
    if i < len(p) and p[i] == "?":  # lazy
        out.append("?")
        i += 1
    if i < len(p) and (p[i] in "*+?" or (p[i] == "{" and _REPEAT.match(p, i))):
        raise _RegexSyntaxError(f"bad repetition operator: {p[i - 1 : i + 1]}")
    return i


def _open_group(p: str, i: int, out: list[str], frames: list[_Frame]) -> int:
    top = frames[-1]
    if not p.startswith("(?", i):
        out.append("(")
        frames.append(_Frame(top.multiline))
        return i + 1
    if p.startswith("(?P<", i):
        out.append("(?P<")
        frames.append(_Frame(top.multiline))
        return i + 4
    if p.startswith("(?<", i) and p[i + 3 : i + 4] not in ("=", "!"):
        out.append("(?P<")
        frames.append(_Frame(top.multiline))
        return i + 3
    m = _FLAG_GROUP.match(p, i)
    if m is None:
        for look in ("(?<=", "(?<!", "(?=", "(?!"):
            if p.startswith(look, i):
                raise _RegexSyntaxError(f"lookaround {look}...) is not supported by RE2")
        raise _RegexSyntaxError(f"invalid or unsupported group syntax {p[i : i + 4]}...")
    on, dash, off, end = m.group(1), m.group(2), m.group(3) or "", m.group(4)
    if not set(on + off) <= set("imsU") or (dash and not off) or (end == ")" and not on + off):
        raise _RegexSyntaxError(f"invalid or unsupported flags {m.group()}")
    if "U" in on + off:
        raise _RegexSyntaxError("the ungreedy flag (?U) is not supported here")
    multiline = top.multiline
    if "m" in on:
        multiline = True
    if "m" in off:
        multiline = False
    out.append(_flag_group(on, off))
    if end == ":":
        frames.append(_Frame(multiline))
    else:  # (?i) switches flags for the rest of the current group: open a scoped group
        top.scoped += 1
        top.on = "".join(sorted((set(top.on) | set(on)) - set(off)))
        top.off = "".join(sorted((set(top.off) | set(off)) - set(on)))
        top.multiline = multiline
    return m.end()


def _re2_to_python(p: str) -> str:
    out: list[str] = []
    frames = [_Frame(False)]
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == "\\":
            piece, i = _translate_escape(p, i, in_class=False)
            out.append(piece)
        elif c == "[":
            piece, i = _translate_class(p, i)
            out.append(piece)
        elif c == "(":
            i = _open_group(p, i, out, frames)
        elif c == ")":
            if len(frames) == 1:
                raise _RegexSyntaxError("unexpected )")
            frame = frames.pop()
            out.append(")" * (frame.scoped + 1))
            i += 1
        elif c == "|":
            frame = frames[-1]
            out.append(")" * frame.scoped + "|")
            frame.scoped = 0
            if frame.on or frame.off:
                out.append(_flag_group(frame.on, frame.off))
                frame.scoped = 1
            i += 1
        elif c == "$":
            # RE2's $ (without m) is the end of the text; Python's also matches before a final \n.
            out.append("$" if frames[-1].multiline else "\\Z")
            i += 1
        elif c == "{":
            m = _REPEAT.match(p, i)
            if m is None:
                out.append("\\{")
                i += 1
                continue
            low, high = int(m.group(1)), m.group(3)
            if low > 1000 or (high and (int(high) > 1000 or int(high) < low)):
                raise _RegexSyntaxError(f"invalid repeat count {m.group()}")
            out.append(m.group())
            i = _after_quantifier(p, m.end(), out)
        elif c in "*+?":
            out.append(c)
            i = _after_quantifier(p, i + 1, out)
        else:
            out.append(c)
            i += 1
    if len(frames) != 1:
        raise _RegexSyntaxError("missing closing )")
    out.append(")" * frames[0].scoped)
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 regex for Python's `re`, translating what differs: ASCII-only \\d \\w \\s \\b,
    `$` as end of text, `(?i)` in mid-pattern, `\\z`, `\\Q...\\E`, `\\x{...}`, octal escapes, POSIX
    classes, `(?<name>...)`. Syntax RE2 rejects (backreferences, lookarounds, possessive and atomic
    groups) is rejected too. Raises QueryError naming the regex. Cached."""
    try:
        translated = _re2_to_python(pattern)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return re.compile(translated)
    except RecursionError:
        raise QueryError(
            f"invalid regular expression {_go_quote(pattern)}: it nests too deeply"
        ) from None
    except (_RegexSyntaxError, re.error, OverflowError) as exc:
        msg = exc.msg if isinstance(exc, re.error) else str(exc)
        raise QueryError(f"invalid regular expression {_go_quote(pattern)}: {msg}") from None


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _is_literal_regex(pattern: str) -> bool:
    return not any(ch in _RE_META for ch in pattern)


def _full_regex_predicate(pattern: str) -> LabelPredicate:
    """A predicate for a fully anchored RE2 match of a label value (None counts as "")."""
    if _is_literal_regex(pattern):
        compile_regex(pattern)  # still validate
        return _equals(pattern)
    alternatives = pattern.split("|")
    if len(alternatives) > 1 and all(_is_literal_regex(a) for a in alternatives):
        choices = frozenset(alternatives)
        return lambda v: (v or "") in choices
    fullmatch = compile_regex(pattern).fullmatch
    return lambda v: fullmatch(v or "") is not None


def _equals(value: str) -> LabelPredicate:
    if value == "":
        return lambda v: not v
    return lambda v: v == value


def compile_matcher(m: Matcher) -> LabelPredicate:
    """A predicate for a label matcher. The argument is the label's value, None when absent (an
    absent label matches like ""). Regexes are fully anchored; an invalid one raises QueryError."""
    value = m.value
    if m.op == "=":
        return _equals(value)
    if m.op == "!=":
        eq = _equals(value)
        return lambda v: not eq(v)
    if m.op == "=~":
        return _full_regex_predicate(value)
    if m.op == "!~":
        pred = _full_regex_predicate(value)
        return lambda v: not pred(v)
    raise QueryError(f"unknown label matcher operator {m.op!r}: use =, !=, =~ or !~")


# ---------------------------------------------------------------- bytes and numbers


_BYTE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _BYTE_UNITS[_p] = _BYTE_UNITS[_p + "b"] = 1000**_i
    _BYTE_UNITS[_p + "i"] = _BYTE_UNITS[_p + "ib"] = 1024**_i
_BYTES_NUMBER = re.compile(r"[0-9.,]*")
_DECIMAL = re.compile(r"\d+\.?\d*|\.\d+")


def parse_bytes(value: str) -> int | None:
    """A byte size the way Loki reads it (go-humanize ParseBytes): `20KB`, `1.5KiB`, `100`,
    `3 MB`, case-insensitive, KB = 1000 and KiB = 1024. None when it is not a size."""
    m = _BYTES_NUMBER.match(value)
    number = m.group().replace(",", "") if m else ""
    if not _DECIMAL.fullmatch(number):
        return None
    scale = _BYTE_UNITS.get(value[m.end() if m else 0 :].strip().lower())
    if scale is None:
        return None
    size = float(number) * scale
    if size >= 2.0**64:
        return None
    return int(size)


def _go_float(value: str) -> float | None:
    """Go's strconv.ParseFloat for decimal input: Python's float() also accepts surrounding space
    and digit underscores, which Go does not."""
    if not value or "_" in value or value[0].isspace() or value[-1].isspace():
        return None
    try:
        return float(value)
    except ValueError:
        return None


# ---------------------------------------------------------------- templates


TemplateRender = Callable[[Mapping[str, str], str], str]


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled `line_format` / `label_format` template (a Go text/template subset)."""

    source: str
    render: TemplateRender  # (labels, current line) -> text
    label_names: frozenset[str]  # labels it reads
    uses_line: bool


_TEMPLATE_KEYWORDS = frozenset(
    {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
)
_TEMPLATE_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<field>\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[|()])
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


_PRINTF_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")


def _go_printf(fmt: str, args: Sequence[str]) -> str:
    """fmt.Sprintf for string arguments and the verbs %s %v %q-less subset (%s, %v, %%)."""
    out: list[str] = []
    pos = 0
    k = 0
    for m in _PRINTF_VERB.finditer(fmt):
        out.append(fmt[pos : m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        if k >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[k]
        k += 1
        if verb not in "sv":
            out.append(f"%!{verb}(string={arg})")
            continue
        if prec is not None:
            arg = arg[: int(prec)]
        if width:
            arg = arg.ljust(int(width)) if "-" in flags else arg.rjust(int(width))
        out.append(arg)
    out.append(fmt[pos:])
    if k < len(args):
        out.append("%!(EXTRA " + ", ".join(f"string={a}" for a in args[k:]) + ")")
    return "".join(out)


# name -> (min args, max args or -1 for variadic, implementation over string arguments)
_TEMPLATE_FUNCS: dict[str, tuple[int, int, Callable[[Sequence[str]], str]]] = {
    "ToUpper": (1, 1, lambda a: a[0].upper()),
    "upper": (1, 1, lambda a: a[0].upper()),
    "ToLower": (1, 1, lambda a: a[0].lower()),
    "lower": (1, 1, lambda a: a[0].lower()),
    "TrimSpace": (1, 1, lambda a: a[0].strip()),
    "trim": (1, 1, lambda a: a[0].strip()),
    "trimAll": (2, 2, lambda a: a[1].strip(a[0])),
    "trimPrefix": (2, 2, lambda a: a[1].removeprefix(a[0])),
    "trimSuffix": (2, 2, lambda a: a[1].removesuffix(a[0])),
    "Trim": (2, 2, lambda a: a[0].strip(a[1])),
    "TrimLeft": (2, 2, lambda a: a[0].lstrip(a[1])),
    "TrimRight": (2, 2, lambda a: a[0].rstrip(a[1])),
    "TrimPrefix": (2, 2, lambda a: a[0].removeprefix(a[1])),
    "TrimSuffix": (2, 2, lambda a: a[0].removesuffix(a[1])),
    "replace": (3, 3, lambda a: a[2].replace(a[0], a[1])),
    "default": (2, 2, lambda a: a[1] if a[1] else a[0]),
    "printf": (1, -1, lambda a: _go_printf(a[0], a[1:])),
}


_TEMPLATE_WS = " \t\r\n"
_COMMENT_END = re.compile(r"\*/[ \t\r\n]*(-[ \t\r\n]+)?\}\}")
_Operand = tuple[TemplateRender, "str | None"]  # (renderer, its value when it is a literal)


def _const(text: str) -> TemplateRender:
    return lambda labels, line: text


class _TemplateCompiler:
    """Compiles one template into a render closure; raises at compile time, never per line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.fields: set[str] = set()
        self.uses_line = False
        self.nesting = 0

    def error(self, what: str) -> QueryError:
        return QueryError(f"invalid template {_go_quote(self.source)}: {what}")

    def compile(self) -> Template:
        parts = self._split()
        fns = [_const(p) if isinstance(p, str) else p for p in parts]
        render: TemplateRender
        if all(isinstance(p, str) for p in parts):
            render = _const("".join(p for p in parts if isinstance(p, str)))
        elif len(fns) == 1:
            render = fns[0]
        else:

            def render(labels: Mapping[str, str], line: str) -> str:
                return "".join([f(labels, line) for f in fns])

        return Template(self.source, render, frozenset(self.fields), self.uses_line)

    def _split(self) -> list[str | TemplateRender]:
        """Literal text and compiled actions, with `{{- ` / ` -}}` whitespace trimming."""
        src = self.source
        parts: list[str | TemplateRender] = []
        pos = 0
        trim_next = False
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if trim_next:
                text = text.lstrip(_TEMPLATE_WS)
            trim_before = (
                start >= 0
                and src[start + 2 : start + 3] == "-"
                and src[start + 3 : start + 4] in tuple(_TEMPLATE_WS)
            )
            if trim_before:
                text = text.rstrip(_TEMPLATE_WS)
            if text:
                parts.append(text)
            if start < 0:
                return parts
            pos, trim_next, node = self._action(start + (3 if trim_before else 2))
            if node is not None:
                parts.append(node)

    def _action(self, i: int) -> tuple[int, bool, TemplateRender | None]:
        """Parse one action from src[i:] up to its `}}`; returns (end, trim-after, renderer)."""
        src = self.source
        j = i
        while j < len(src) and src[j] in _TEMPLATE_WS:
            j += 1
        if src.startswith("/*", j):  # a comment: {{/* ... */}}
            close = _COMMENT_END.search(src, j + 2)
            if close is None:
                raise self.error("unclosed comment")
            return close.end(), close.group(1) is not None, None
        tokens: list[tuple[str, str]] = []
        pos = i
        while True:
            if src.startswith("}}", pos):
                end, trim = pos + 2, False
                break
            if src.startswith("-}}", pos) and pos > i and src[pos - 1] in _TEMPLATE_WS:
                end, trim = pos + 3, True
                break
            m = _TEMPLATE_TOKEN.match(src, pos)
            if m is None:
                raise self.error("unclosed action: missing }}")
            kind = m.lastgroup or "other"
            if kind == "other":
                if m.group() == "$":
                    raise LogQLUnsupportedError("the template variable syntax $name")
                raise self.error(f"unexpected {m.group()!r} in action")
            if kind != "ws":
                tokens.append((kind, m.group()))
            pos = m.end()
        if not tokens:
            raise self.error("empty action {{}}")
        if tokens[0][0] == "ident" and tokens[0][1] in _TEMPLATE_KEYWORDS:
            raise LogQLUnsupportedError(f"template action {{{{{tokens[0][1]}}}}}")
        node, k = self._pipeline(tokens, 0)
        if k != len(tokens):
            raise self.error(f"unexpected {tokens[k][1]!r} in action")
        return end, trim, node

    def _pipeline(self, toks: list[tuple[str, str]], k: int) -> tuple[TemplateRender, int]:
        self.nesting += 1
        if self.nesting > 32:
            raise self.error("parentheses nest more than 32 levels deep")
        node, k = self._command(toks, k, None)
        while k < len(toks) and toks[k] == ("punct", "|"):
            node, k = self._command(toks, k + 1, node)
        self.nesting -= 1
        return node, k

    def _command(
        self, toks: list[tuple[str, str]], k: int, piped: TemplateRender | None
    ) -> tuple[TemplateRender, int]:
        first: tuple[str, str] | None = None
        operands: list[_Operand] = []
        while k < len(toks) and toks[k] not in (("punct", "|"), ("punct", ")")):
            kind, text = toks[k]
            if first is None:
                first = (kind, text)
                if kind == "ident" and text not in ("true", "false", "nil"):
                    k += 1
                    continue  # the function name; its arguments follow
            if text == "(":
                inner, k = self._pipeline(toks, k + 1)
                if k >= len(toks) or toks[k] != ("punct", ")"):
                    raise self.error("unclosed (")
                operands.append((inner, None))
            else:
                operands.append(self._operand(kind, text))
            k += 1
        if first is None:
            raise self.error("missing value in action")
        kind, text = first
        if kind == "ident" and text not in ("true", "false", "nil"):
            if piped is not None:
                operands.append((piped, None))
            return self._call(text, operands), k
        if len(operands) > 1 or piped is not None:
            raise self.error(f"can't give argument to non-function {text}")
        return operands[0][0], k

    def _operand(self, kind: str, text: str) -> _Operand:
        if kind == "field":
            name = text[1:]
            self.fields.add(name)
            return (lambda labels, line: labels.get(name, "")), None
        if kind in ("str", "raw"):
            if kind == "raw":
                value = text[1:-1]
            else:
                try:
                    value = unquote_go_string(text[1:-1])
                except ValueError as exc:
                    raise self.error(str(exc.args[0])) from None
            return _const(value), value
        if kind == "num":
            return _const(text), text
        if kind == "ident":
            if text in ("true", "false", "nil"):
                raise LogQLUnsupportedError(f"template constant {text}")
            return self._call(text, []), None  # a niladic function used as an argument
        raise self.error(f"unexpected {text!r}")

    def _call(self, name: str, args: list[_Operand]) -> TemplateRender:
        if name == "__line__":
            if args:
                raise self.error("__line__ takes no arguments")
            self.uses_line = True
            return lambda labels, line: line
        spec = _TEMPLATE_FUNCS.get(name)
        if spec is None:
            raise LogQLUnsupportedError(f"template function {name}")
        low, high, impl = spec
        if len(args) < low or (high >= 0 and len(args) > high):
            want = f"{low}" if low == high else f"at least {low}"
            raise self.error(f"wrong number of arguments for {name}: want {want}, got {len(args)}")
        if name == "printf" and args[0][1] is None:
            raise LogQLUnsupportedError("printf with a format that is not a string literal")
        fns = [a[0] for a in args]

        def call(labels: Mapping[str, str], line: str) -> str:
            return impl([f(labels, line) for f in fns])

        return call


@functools.lru_cache(maxsize=512)
def compile_template(source: str) -> Template:
    """Compile a Go text/template subset: literal text, `{{.label}}`, `{{ __line__ }}`, string
    literals, pipelines (`{{ .a | lower }}`), parentheses, `{{- -}}` trimming, comments, and the
    functions ToUpper/upper, ToLower/lower, trim/TrimSpace, trimAll/trimPrefix/trimSuffix,
    Trim/TrimLeft/TrimRight/TrimPrefix/TrimSuffix, replace, default and printf (%s %v).
    Anything else raises LogQLUnsupportedError naming it; malformed templates raise QueryError."""
    return _TemplateCompiler(source).compile()


# ---------------------------------------------------------------- parsers


@functools.lru_cache(maxsize=8192)
def _sanitize_key(key: str, first: bool) -> str:
    key = key.strip()
    if not key:
        return ""
    if first and "0" <= key[0] <= "9":
        key = "_" + key
    return _NON_LABEL_CHAR.sub("_", key)


_NON_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_LEADING_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(line: str) -> int:
    m = _LEADING_WS.match(line)
    return m.end() if m else 0


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid JSON value {name}")


class _RawNumber(str):
    """A JSON number kept exactly as written (for re-serialising objects)."""

    __slots__ = ()


# Numbers stay as written ("1.50" stays "1.50"); NaN/Infinity are not JSON.
_json_flat = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=_reject_constant)
_json_raw = json.JSONDecoder(
    parse_int=_RawNumber, parse_float=_RawNumber, parse_constant=_reject_constant
)


def _set_error(lb: Labels, kind: str, details: str | None) -> None:
    lb[ERROR_LABEL] = kind
    if details:
        lb[ERROR_DETAILS_LABEL] = details


def _json_scalar(v: object) -> str | None:
    if isinstance(v, str):
        return v
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return ""
    return None  # object or array


def _flatten_json(
    obj: dict[str, object], prefix: str, lb: Labels, base: Mapping[str, str], fix: bool
) -> None:
    for key, value in obj.items():
        name = _sanitize_key(key, not prefix)
        if prefix:
            name = f"{prefix}_{name}"
        elif not name:
            continue
        if isinstance(value, dict):
            _flatten_json(value, name, lb, base, fix)
            continue
        text = _json_scalar(value)
        if text is None:
            continue  # arrays are skipped
        if name in base:
            name += _DUPLICATE_SUFFIX
        lb[name] = _SURROGATE.sub(" ", text) if fix else text


def _json_all_stage() -> _StageFn:
    decode = _json_flat.raw_decode

    def stage(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        try:
            obj, _ = decode(line, _skip_ws(line))
        except ValueError as exc:
            _set_error(lb, JSON_PARSER_ERR, str(exc))
            return line
        if not isinstance(obj, dict):
            _set_error(lb, JSON_PARSER_ERR, "expecting a JSON object, but it is not")
            return line
        # A \ud800 escape decodes to a lone surrogate, which cannot be encoded later.
        _flatten_json(obj, "", lb, base, "\\u" in line)
        return line

    return stage


_JSON_PATH_TOKEN = re.compile(r"""\.?([^.\[\]"']+)|\[(\d+)\]|\[\s*"((?:[^"\\]|\\.)*)"\s*\]""")


def parse_json_path(path: str) -> tuple[str | int, ...]:
    """Split a `| json name="path"` expression (`a.b[0]`, `a["b.c"]`) into keys and indexes."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _JSON_PATH_TOKEN.match(path, pos)
        if m is None or (m.group(1) is not None and m.group().startswith(".") and pos == 0):
            raise QueryError(
                f'cannot parse JSON expression {_go_quote(path)}: use a.b, a[0] or a["b.c"]'
            )
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            try:
                parts.append(json.loads(f'"{m.group(3)}"'))
            except ValueError:
                raise QueryError(f"invalid escape in JSON expression {_go_quote(path)}") from None
        pos = m.end()
    if not parts:
        raise QueryError("a JSON expression must not be empty")
    return tuple(parts)


def _json_dump_raw(v: object) -> str:
    if isinstance(v, _RawNumber):
        return str.__str__(v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{_go_quote(k)}:{_json_dump_raw(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_json_dump_raw(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def _json_lookup(obj: object, path: tuple[str | int, ...]) -> str:
    cur = obj
    for step in path:
        if isinstance(step, int):
            if not isinstance(cur, list) or step >= len(cur):
                return ""
            cur = cur[step]
        else:
            if not isinstance(cur, dict) or step not in cur:
                return ""
            cur = cur[step]
    if isinstance(cur, _RawNumber):
        return str.__str__(cur)
    text = _json_scalar(cur)
    return _json_dump_raw(cur) if text is None else text


def _json_params_stage(params: tuple[tuple[str, str], ...]) -> _StageFn:
    paths = [(name, parse_json_path(path)) for name, path in params]
    decode = _json_raw.raw_decode

    def stage(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        if not line:
            return line
        start = _skip_ws(line)
        if line[start : start + 1] not in ('"', "{", "["):
            _set_error(lb, JSON_PARSER_ERR, "the line does not start with a JSON value")
            return line
        try:
            obj, _ = decode(line, start)
        except ValueError as exc:
            for name, _path in paths:
                lb[name + _DUPLICATE_SUFFIX if name in base else name] = ""
            _set_error(lb, JSON_PARSER_ERR, str(exc))
            return line
        fix = "\\u" in line
        for name, path in paths:
            value = _json_lookup(obj, path)
            lb[name + _DUPLICATE_SUFFIX if name in base else name] = (
                _SURROGATE.sub(" ", value) if fix else value
            )
        return line

    return stage


# logfmt: a well-formed line (the common case) is split by two C-speed regexes; anything else
# goes through `_logfmt_scan`, which reproduces Loki's decoder error by error.
_LF_KEY = r'[^\x00-\x20="]++'
_LF_PAIR_SRC = rf'{_LF_KEY}(?:=(?:"(?:[^"\\]|\\[\s\S])*+"|[^\x00-\x20="]*+))?'
_LF_LINE = re.compile(
    rf"[\x00-\x20]*+(?:{_LF_PAIR_SRC}(?:(?:[\x00-\x20]++|(?<=\")){_LF_PAIR_SRC})*+)?[\x00-\x20]*+"
)
_LF_PAIR = re.compile(r'([^\x00-\x20="]+)(?:=(?:"((?:[^"\\]|\\[\s\S])*)"|([^\x00-\x20="]*)))?')
_LF_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "'": "'", "b": "\b", "f": "\f", "n": "\n"}
_LF_ESCAPES.update({"r": "\r", "t": "\t"})


def _logfmt_unquote(raw: str) -> str | None:
    """Unquote a logfmt quoted value that contains escapes (JSON-style); None if invalid."""
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c < " ":
            return None
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            return None
        e = raw[i + 1]
        if e in _LF_ESCAPES:
            out.append(_LF_ESCAPES[e])
            i += 2
        elif e == "u" and len(raw) >= i + 6 and set(raw[i + 2 : i + 6]) <= _HEX:
            code = int(raw[i + 2 : i + 6], 16)
            i += 6
            tail = raw[i + 2 : i + 6]
            if 0xD800 <= code < 0xDC00 and raw[i : i + 2] == "\\u" and set(tail) <= _HEX:
                low = int(tail, 16) if len(tail) == 4 else 0
                if 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            out.append("\ufffd" if 0xD800 <= code < 0xE000 else chr(code))
        else:
            return None
    return "".join(out)


def _skip_to_space(line: str, pos: int) -> int:
    n = len(line)
    while pos < n and line[pos] > " ":
        pos += 1
    return pos


def _logfmt_scan(line: str, strict: bool) -> tuple[list[tuple[str, str]], str | None]:
    """Loki's logfmt decoder: pairs, and (strict only) the first syntax error. Without --strict a
    malformed pair is skipped; with it, decoding stops there and the error is reported."""
    pairs: list[tuple[str, str]] = []
    n = len(line)
    pos = 0
    while pos < n:
        while pos < n and line[pos] <= " ":
            pos += 1
        if pos >= n:
            break
        start = pos
        while pos < n and line[pos] not in '="' and line[pos] > " ":
            pos += 1
        key = line[start:pos]
        error: str | None = None
        if pos >= n or line[pos] <= " ":
            pairs.append((key, ""))  # a standalone key
            continue
        if line[pos] == '"' or not key:
            error = f"logfmt syntax error at pos {pos + 1} : unexpected {line[pos]!r}"
            pos = _skip_to_space(line, pos)
        else:
            pos += 1  # past "="
            if pos >= n or line[pos] <= " ":
                pairs.append((key, ""))
                continue
            if line[pos] == '"':
                j, escaped, has_escape = pos + 1, False, False
                while j < n:
                    c = line[j]
                    if escaped:
                        escaped = False
                    elif c == "\\":
                        escaped = has_escape = True
                    elif c == '"':
                        break
                    j += 1
                if j >= n:
                    error = f"logfmt syntax error at pos {n + 1} : unterminated quoted value"
                    pos = n
                else:
                    raw = line[pos + 1 : j]
                    pos = j + 1
                    value = _logfmt_unquote(raw) if has_escape else raw
                    if value is None:
                        error = f"logfmt syntax error at pos {pos + 1} : invalid quoted value"
                    else:
                        pairs.append((key, value))
            else:
                vstart = pos
                while pos < n and line[pos] > " " and line[pos] not in '="':
                    pos += 1
                if pos < n and line[pos] in '="':
                    error = f"logfmt syntax error at pos {pos + 1} : unexpected {line[pos]!r}"
                    pos = _skip_to_space(line, pos)
                else:
                    pairs.append((key, line[vstart:pos]))
        if error is not None and strict:
            return pairs, error
    return pairs, None


def _logfmt_pairs(line: str, strict: bool) -> tuple[list[tuple[str, str]], str | None]:
    if _LF_LINE.fullmatch(line) is None:
        return _logfmt_scan(line, strict)
    pairs: list[tuple[str, str]] = []
    for key, quoted, plain in _LF_PAIR.findall(line):
        if "\\" in quoted:
            value = _logfmt_unquote(quoted)
            if value is None:
                return _logfmt_scan(line, strict)
            pairs.append((key, value))
        else:
            pairs.append((key, quoted or plain))
    return pairs, None


def _logfmt_all_stage(strict: bool, keep_empty: bool) -> _StageFn:
    def stage(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        pairs, error = _logfmt_pairs(line, strict)
        for key, value in pairs:
            name = _sanitize_key(key, True)
            if not name:
                continue
            if name in base:
                name += _DUPLICATE_SUFFIX
            if value or keep_empty:
                lb[name] = value
        if error is not None:
            _set_error(lb, LOGFMT_PARSER_ERR, error)
        return line

    return stage


def _logfmt_params_stage(params: tuple[tuple[str, str], ...], strict: bool) -> _StageFn:
    by_source: dict[str, list[str]] = {}
    for name, source in params:
        by_source.setdefault(source, []).append(name)
    names = [name for name, _source in params]

    def stage(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        for name in names:
            if name not in base:
                lb[name] = ""
        pairs, error = _logfmt_pairs(line, strict)
        for key, value in pairs:
            targets = by_source.get(key) or by_source.get(_sanitize_key(key, True))
            if not targets:
                continue
            for name in targets:
                lb[name + _DUPLICATE_SUFFIX if name in base else name] = value
        if error is not None:
            _set_error(lb, LOGFMT_PARSER_ERR, error)
        return line

    return stage


# ---------------------------------------------------------------- label filters


_CMP: dict[str, Callable[[float, float], bool]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_LabelsPredicate = Callable[[Labels], bool]


def _conversion_filter(
    name: str, op: CmpOp, target: float, convert: Callable[[str], float | None], what: str
) -> _LabelsPredicate:
    cmp = _CMP.get(op)
    if cmp is None:
        raise QueryError(f"operator {op} cannot compare {what}s: use == != > >= < <=")

    def check(lb: Labels) -> bool:
        if ERROR_LABEL in lb:
            return True  # after an error only string filters may drop the line (as Loki)
        value = lb.get(name)
        if value is None:
            return False
        number = convert(value)
        if number is None:
            lb[ERROR_LABEL] = LABEL_FILTER_ERR
            lb[ERROR_DETAILS_LABEL] = f"cannot parse {_go_quote(value)} as a {what}"
            return True
        return cmp(number, target)

    return check


def _compile_label_expr(expr: LabelExpr) -> _LabelsPredicate:
    if isinstance(expr, LabelAnd):
        left, right = _compile_label_expr(expr.left), _compile_label_expr(expr.right)
        return lambda lb: left(lb) and right(lb)
    if isinstance(expr, LabelOr):
        left, right = _compile_label_expr(expr.left), _compile_label_expr(expr.right)
        return lambda lb: left(lb) or right(lb)
    name, op, value = expr.name, expr.op, expr.value
    if expr.kind == "string":
        match_op = "=" if op == "==" else op
        if match_op not in ("=", "!=", "=~", "!~"):
            raise QueryError(f"operator {op} cannot compare strings: use = != =~ !~")
        pred = compile_matcher(Matcher(name, match_op, value))
        return lambda lb: pred(lb.get(name))
    if expr.kind == "number":
        target = _go_float(value)
        if target is None:
            raise QueryError(f"invalid number {value!r} in label filter on {name}")
        return _conversion_filter(name, op, target, _go_float, "number")
    if expr.kind == "duration":
        sign = -1.0 if value.startswith("-") else 1.0
        target = sign * parse_duration(value.lstrip("+-"))
        return _conversion_filter(name, op, target, _as_float(try_parse_go_duration), "duration")
    if expr.kind == "bytes":
        size = parse_bytes(value)
        if size is None:
            raise QueryError(f"invalid byte size {value!r} in label filter on {name}")
        return _conversion_filter(name, op, float(size), _as_float(parse_bytes), "byte size")
    raise QueryError(f"unknown label filter kind {expr.kind!r}")


def _as_float(fn: Callable[[str], int | None]) -> Callable[[str], float | None]:
    def convert(value: str) -> float | None:
        got = fn(value)
        return None if got is None else float(got)

    return convert


# ---------------------------------------------------------------- stages


def _line_filter_predicate(f: LineFilter) -> Callable[[str], bool]:
    value = f.value
    if f.op == "|=":
        return lambda line: value in line
    if f.op == "!=":
        return lambda line: value not in line
    if f.op in ("|~", "!~"):
        search = compile_regex(value).search
        if f.op == "|~":
            if _is_literal_regex(value):
                return lambda line: value in line
            return lambda line: search(line) is not None
        if _is_literal_regex(value):
            return lambda line: value not in line
        return lambda line: search(line) is None
    raise QueryError(f"unknown line filter operator {f.op!r}: use |= != |~ !~")


def _label_format_stage(stage: LabelFormat) -> _StageFn:
    ops: list[tuple[str, str, Template | None]] = []
    seen: set[str] = set()
    for dst, src, is_template in stage.renames:
        if dst == ERROR_LABEL:
            raise QueryError(f"{ERROR_LABEL} cannot be formatted")
        if dst in seen:
            raise QueryError(
                f"multiple label name '{dst}' not allowed in a single format operation"
            )
        seen.add(dst)
        ops.append((dst, src, compile_template(src) if is_template else None))

    def run(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        snapshot: Labels | None = None
        for dst, src, template in ops:
            if template is None:
                if src in lb and src != dst:
                    lb[dst] = lb.pop(src)
                continue
            if snapshot is None:  # as Loki: templates see the labels once, before their writes
                snapshot = dict(lb)
            lb[dst] = template.render(snapshot, line)
        return line

    return run


def _drop_stage(stage: DropLabels) -> _StageFn:
    names = tuple(stage.names)
    matchers = [(m.name, compile_matcher(m)) for m in stage.matchers]

    def run(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        for name in names:
            lb.pop(name, None)
        for name, pred in matchers:
            if name in lb and pred(lb[name]):
                del lb[name]
        return line

    return run


def _keep_stage(stage: KeepLabels) -> _StageFn:
    names = frozenset(stage.names)
    matchers = [(m.name, compile_matcher(m)) for m in stage.matchers]

    def run(line: str, lb: Labels, base: Mapping[str, str]) -> str | None:
        for key in list(lb):
            if key in names or key in _SPECIAL_LABELS:
                continue
            if any(key == name and pred(lb[key]) for name, pred in matchers):
                continue
            del lb[key]
        return line

    return run


def _compile_stage(stage: Stage) -> _StageFn:
    if isinstance(stage, LineFilter):
        pred = _line_filter_predicate(stage)
        return lambda line, lb, base: line if pred(line) else None
    if isinstance(stage, JsonParser):
        return _json_params_stage(stage.params) if stage.params else _json_all_stage()
    if isinstance(stage, LogfmtParser):
        if stage.params:
            return _logfmt_params_stage(stage.params, stage.strict)
        return _logfmt_all_stage(stage.strict, stage.keep_empty)
    if isinstance(stage, LabelFilter):
        check = _compile_label_expr(stage.expr)
        return lambda line, lb, base: line if check(lb) else None
    if isinstance(stage, LineFormat):
        render = compile_template(stage.template).render
        return lambda line, lb, base: render(lb, line)
    if isinstance(stage, LabelFormat):
        return _label_format_stage(stage)
    if isinstance(stage, DropLabels):
        return _drop_stage(stage)
    if isinstance(stage, KeepLabels):
        return _keep_stage(stage)
    raise LogQLUnsupportedError(f"pipeline stage {type(stage).__name__}")


def _needs_labels(stage: Stage) -> bool:
    if isinstance(stage, LineFilter):
        return False
    if isinstance(stage, LineFormat):
        return bool(compile_template(stage.template).label_names)
    return True


class Pipeline:
    """A compiled pipeline. `process(line, labels)` returns the (possibly new) line and labels,
    or None when a stage filters the line out. It never mutates `labels`; when no stage touches
    labels the same dict is returned.

    - `is_noop`: there are no stages (process returns its input unchanged);
    - `needs_labels`: some stage reads or writes labels (when False, the caller may pass `{}`).
    """

    __slots__ = ("is_noop", "needs_labels", "process", "stages")

    process: ProcessFn

    def __init__(self, stages: tuple[Stage, ...]) -> None:
        self.stages = stages
        self.is_noop = not stages
        self.needs_labels = any(_needs_labels(s) for s in stages)
        self.process = _build_process(stages)

    def __repr__(self) -> str:
        return f"Pipeline({len(self.stages)} stages)"


def _build_process(stages: tuple[Stage, ...]) -> ProcessFn:
    # Leading line filters run on the bare line before any dict is copied.
    k = 0
    while k < len(stages) and isinstance(stages[k], LineFilter):
        k += 1
    head = [_line_filter_predicate(s) for s in stages[:k] if isinstance(s, LineFilter)]
    rest = [_compile_stage(s) for s in stages[k:]]

    if not rest:
        if not head:
            return lambda line, labels: (line, labels)
        if len(head) == 1 and isinstance(stages[0], LineFilter) and stages[0].op == "|=":
            needle = stages[0].value

            def contains(line: str, labels: Labels) -> tuple[str, Labels] | None:
                return (line, labels) if needle in line else None  # the hot path: one `in`

            return contains

        def filters_only(line: str, labels: Labels) -> tuple[str, Labels] | None:
            for pred in head:
                if not pred(line):
                    return None
            return line, labels

        return filters_only

    def process(line: str, labels: Labels) -> tuple[str, Labels] | None:
        for pred in head:
            if not pred(line):
                return None
        lb = dict(labels)
        for stage in rest:
            new = stage(line, lb, labels)
            if new is None:
                return None
            line = new
        return line, lb

    return process


@functools.lru_cache(maxsize=256)
def _compile_cached(stages: tuple[Stage, ...]) -> Pipeline:
    return Pipeline(stages)


def compile_pipeline(stages: Sequence[Stage]) -> Pipeline:
    """Compile the stages of a log query once; raises QueryError / LogQLUnsupportedError for an
    invalid regex, template or stage. Compiled pipelines are cached (they hold no state)."""
    key = tuple(stages)
    try:
        return _compile_cached(key)
    except TypeError:  # an unhashable stage (not built by the parser): compile uncached
        return Pipeline(key)


def pushdown_line_filters(stages: Sequence[Stage]) -> tuple[list[str], list[str]]:
    """The literal `|= "s"` (contains) and `!= "s"` (does not contain) values that hold for the
    stored line: every such filter before the first stage that changes the line (`line_format`).
    Parsers, label filters and label stages do not change the line, so filters after them still
    count. A store may push these into SQL; the pipeline applies them again anyway (cheap).
    `|= ""` is always true and is left out."""
    contains: list[str] = []
    not_contains: list[str] = []
    for stage in stages:
        if isinstance(stage, LineFormat):
            break
        if isinstance(stage, LineFilter):
            if stage.op == "|=" and stage.value:
                contains.append(stage.value)
            elif stage.op == "!=":
                not_contains.append(stage.value)
    return contains, not_contains
