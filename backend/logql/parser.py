"""A hand-written LogQL parser (lexer + recursive descent) for the core subset.

`parse(text)` returns a `ParsedQuery` of `backend.logql.ast` nodes. A syntax error raises
`LogQLSyntaxError` with the offending token's position (1-based line and column) and what was
expected; valid LogQL outside the subset raises `LogQLUnsupportedError` naming the construct, so a
query is never answered wrongly. Regexes and templates are validated here, so a query that parses
also compiles. Results are cached by query text (the tree is immutable).

Grammar (informally):

    query     := expr EOF
    expr      := unary (binop unary)*           PromQL precedence: ^ (right) > * / % > + -
    unary     := ("+"|"-") NUMBER | primary
    primary   := NUMBER | "(" expr ")" | logquery | rangeagg | vectoragg
    logquery  := selector pipeline
    selector  := "{" [matcher ("," matcher)*] "}"
    pipeline  := (linefilter | "|" stage)*
    rangeagg  := RANGEOP "(" logrange ")"
    logrange  := selector RANGE pipeline | selector pipeline RANGE | "(" logquery ")" RANGE
    vectoragg := VECOP [grouping] "(" [NUMBER ","] expr ")" [grouping]
    labelexpr := andexpr ("or" andexpr)*         "or" binds looser than and / "," / whitespace
    andexpr   := labelprim (("and" | "," | nothing) labelprim)*
"""

from __future__ import annotations

import functools
import re
from typing import Final, Literal, NamedTuple, NoReturn

from ..errors import LogQLSyntaxError, LogQLUnsupportedError, QueryError
from .ast import (
    BinaryOp,
    CmpOp,
    DropLabels,
    Expr,
    Grouping,
    JsonParser,
    KeepLabels,
    LabelAnd,
    LabelCompare,
    LabelExpr,
    LabelFilter,
    LabelFormat,
    LabelOr,
    LineFilter,
    LineFilterOp,
    LineFormat,
    LogfmtParser,
    LogQuery,
    Matcher,
    MatchOp,
    MetricExpr,
    NumberLiteral,
    ParsedQuery,
    RangeAggregation,
    RangeOp,
    Selector,
    Stage,
    VectorAggregation,
    VectorOp,
)
from .pipeline import (
    compile_matcher,
    compile_regex,
    compile_template,
    parse_bytes,
    parse_json_path,
    unquote_go_string,
)
from .timefmt import parse_duration

__all__ = ["parse"]

_TOKEN: Final = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\v]+|\#[^\n]*)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<range>\[[^\]\n]*\])
  | (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?![\w.]))
  | (?P<word>(?:\d|\.\d)[\w.]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<flag>--[A-Za-z][A-Za-z0-9_-]*)
  | (?P<op>\|=|\|~|\|>|!=|!~|!>|==|=~|>=|<=|[|=><(){},+\-*/%^])
    """,
    re.VERBOSE,
)

_RANGE_OPS: Final[dict[str, RangeOp]] = {
    "count_over_time": "count_over_time",
    "rate": "rate",
    "bytes_over_time": "bytes_over_time",
    "bytes_rate": "bytes_rate",
    "absent_over_time": "absent_over_time",
}
_VECTOR_OPS: Final[dict[str, VectorOp]] = {
    "sum": "sum",
    "avg": "avg",
    "min": "min",
    "max": "max",
    "count": "count",
    "topk": "topk",
    "bottomk": "bottomk",
}
_UNWRAP = "(an unwrap range aggregation)"
_UNSUPPORTED_FUNCS: Final = {
    **{
        f"{op}_over_time": f"{op}_over_time {_UNWRAP}"
        for op in ("sum", "avg", "min", "max", "stddev", "stdvar", "quantile", "first", "last")
    },
    "rate_counter": f"rate_counter {_UNWRAP}",
    "stddev": "the stddev aggregation",
    "stdvar": "the stdvar aggregation",
    "sort": "sort()",
    "sort_desc": "sort_desc()",
    "approx_topk": "approx_topk()",
    "label_replace": "label_replace()",
    "vector": "vector()",
}
_UNSUPPORTED_STAGES: Final = {
    "regexp": "| regexp",
    "pattern": "| pattern",
    "unpack": "| unpack",
    "unwrap": "| unwrap (unwrap range aggregations)",
    "decolorize": "| decolorize",
    "distinct": "| distinct",
}
_MATCH_OPS: Final[dict[str, MatchOp]] = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}
_LINE_FILTER_OPS: Final[dict[str, LineFilterOp]] = {"|=": "|=", "!=": "!=", "|~": "|~", "!~": "!~"}
_CMP_OPS: Final[dict[str, CmpOp]] = {
    "=": "=",
    "==": "==",
    "!=": "!=",
    "=~": "=~",
    "!~": "!~",
    ">": ">",
    ">=": ">=",
    "<": "<",
    "<=": "<=",
}
_VALUE_KINDS: Final[dict[str, Literal["number", "duration", "bytes"]]] = {
    "num": "number",
    "dur": "duration",
    "bytes": "bytes",
}
_ORDER_OPS: Final = frozenset({">", ">=", "<", "<="})
# (precedence, right-associative); comparisons and set operators are refused by name.
_BINOPS: Final[dict[str, tuple[int, bool]]] = {
    "+": (1, False),
    "-": (1, False),
    "*": (2, False),
    "/": (2, False),
    "%": (2, False),
    "^": (3, True),
}
_ArithOp = Literal["+", "-", "*", "/", "%", "^"]
_ARITH_OPS: Final[dict[str, _ArithOp]] = {
    "+": "+",
    "-": "-",
    "*": "*",
    "/": "/",
    "%": "%",
    "^": "^",
}
_COMPARISONS: Final = frozenset({"==", "!=", ">", ">=", "<", "<="})
_STAGE_EXPECTED: Final = (
    "a parser (json, logfmt), a label filter (name op value), line_format, label_format, "
    "drop or keep"
)
_PRIMARY_EXPECTED: Final = (
    "a stream selector {...}, a number or a function such as count_over_time, rate or sum"
)
_EMPTY_COMPATIBLE: Final = (
    "queries require at least one regexp or equality matcher that does not have an "
    'empty-compatible value. For instance, app=~".*" does not meet this requirement, '
    'but app=~".+" will'
)


class _Tok(NamedTuple):
    kind: str  # str num dur bytes ident range flag op eof
    text: str  # as written
    value: str  # decoded string, operator, identifier, or range contents
    pos: int


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _syntax_error(text: str, pos: int, message: str, expected: str = "") -> LogQLSyntaxError:
    line, col = _line_col(text, pos)
    return LogQLSyntaxError(message, pos=pos, line=line, col=col, expected=expected)


def _describe(tok: _Tok) -> str:
    shown = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return {
        "eof": "end of query",
        "op": f'"{shown}"',
        "str": f"string {shown}",
        "ident": f'identifier "{shown}"',
        "num": f"number {shown}",
        "dur": f"duration {shown}",
        "bytes": f"byte size {shown}",
        "range": f"range {shown}",
        "flag": f"flag {shown}",
    }.get(tok.kind, shown)


def _lex(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, n = 0, len(text)
    match = _TOKEN.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            ch = text[pos]
            if ch == '"':
                msg = "syntax error: unterminated string (no closing quote on this line)"
            elif ch == "`":
                msg = "syntax error: unterminated raw string (missing closing `)"
            elif ch == "[":
                msg = "syntax error: unterminated range (missing ])"
            else:
                msg = f"syntax error: unexpected character {ch!r}"
            raise _syntax_error(text, pos, msg)
        kind = m.lastgroup
        raw = m.group()
        if kind == "ws":
            pass
        elif kind == "str":
            try:
                value = unquote_go_string(raw[1:-1])
            except ValueError as exc:
                raise _syntax_error(
                    text, pos + 1 + int(exc.args[1]), f"syntax error: {exc.args[0]}"
                ) from None
            toks.append(_Tok("str", raw, value, pos))
        elif kind == "raw":
            toks.append(_Tok("str", raw, raw[1:-1], pos))
        elif kind == "range":
            toks.append(_Tok("range", raw, raw[1:-1].strip(), pos))
        elif kind == "word":
            toks.append(_Tok(_classify_word(text, raw, pos), raw, raw, pos))
        else:
            toks.append(_Tok(kind or "op", raw, raw, pos))
        pos = m.end()
    toks.append(_Tok("eof", "", "", n))
    return toks


def _classify_word(text: str, word: str, pos: int) -> str:
    """A number glued to letters: a duration (10ms, 1h30m) or a byte size (20KB, 1.5KiB)."""
    try:
        parse_duration(word)
        return "dur"
    except QueryError:
        pass
    if parse_bytes(word) is not None:
        return "bytes"
    raise _syntax_error(
        text,
        pos,
        f'syntax error: invalid number "{word}": expected a number, a duration such as 10ms '
        "or a byte size such as 20KB",
    )


_MAX_NESTING: Final = 64  # parentheses / right-nested operators while parsing
_MAX_DEPTH: Final = 128  # depth of the finished tree (evaluation recurses over it)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _lex(text)
        self.i = 0
        self.nesting = 0
        self.depths: dict[int, int] = {}  # id(node) -> depth of its subtree

    def enter(self) -> None:
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            raise self.error_at(
                self.peek(), f"syntax error: the query nests more than {_MAX_NESTING} levels deep"
            )

    def deeper(self, node: object, *children: object) -> None:
        """Record the depth of a new node; long operator chains are refused before they can
        exhaust the stack of the recursive compiler and evaluator."""
        depth = 1 + max((self.depths.get(id(c), 1) for c in children), default=0)
        if depth > _MAX_DEPTH:
            raise self.error_at(
                self.peek(),
                f"syntax error: the query is too deeply nested (more than {_MAX_DEPTH} levels "
                "of operators)",
            )
        self.depths[id(node)] = depth

    # ------------------------------------------------------------ token helpers

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def next(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def at_op(self, *ops: str) -> bool:
        tok = self.toks[self.i]
        return tok.kind == "op" and tok.value in ops

    def at_ident(self, *names: str) -> bool:
        tok = self.toks[self.i]
        return tok.kind == "ident" and tok.value in names

    def fail(self, tok: _Tok, expected: str) -> NoReturn:
        raise _syntax_error(
            self.text,
            tok.pos,
            f"syntax error: unexpected {_describe(tok)}, expected {expected}",
            expected,
        )

    def error_at(self, tok: _Tok, message: str) -> LogQLSyntaxError:
        return _syntax_error(self.text, tok.pos, message)

    def expect_op(self, op: str, expected: str | None = None) -> _Tok:
        tok = self.peek()
        if tok.kind != "op" or tok.value != op:
            self.fail(tok, expected or f'"{op}"')
        return self.next()

    def expect_ident(self, expected: str) -> _Tok:
        tok = self.peek()
        if tok.kind != "ident":
            self.fail(tok, expected)
        return self.next()

    def expect_string(self, expected: str) -> _Tok:
        tok = self.peek()
        if tok.kind != "str":
            self.fail(tok, expected)
        return self.next()

    def check_regex(self, tok: _Tok) -> None:
        try:
            compile_regex(tok.value)
        except QueryError as exc:
            raise self.error_at(tok, str(exc)) from None

    # ------------------------------------------------------------ expressions

    def query(self) -> Expr:
        expr = self.expr(0)
        tok = self.peek()
        if tok.kind != "eof":
            if tok.kind == "range":
                raise self.error_at(
                    tok,
                    f"syntax error: unexpected range {tok.text}: a range is only allowed inside "
                    "a range aggregation such as count_over_time({...}[5m])",
                )
            if isinstance(expr, LogQuery):
                self.fail(tok, "a pipeline stage (| |= != |~ !~) or the end of the query")
            self.fail(tok, "an operator (+ - * / % ^) or the end of the query")
        return expr

    def check_binop(self, tok: _Tok) -> None:
        if tok.kind == "op" and tok.value in _COMPARISONS:
            raise LogQLUnsupportedError(f"the comparison operator {tok.value}")
        if tok.kind == "ident" and tok.value in ("and", "or", "unless"):
            raise LogQLUnsupportedError(f"the {tok.value} operator between vectors")

    def expr(self, min_prec: int) -> Expr:
        self.enter()
        try:
            return self.expr_chain(min_prec)
        finally:
            self.nesting -= 1

    def expr_chain(self, min_prec: int) -> Expr:
        left = self.unary()
        while True:
            tok = self.peek()
            self.check_binop(tok)
            if tok.kind != "op" or tok.value not in _BINOPS:
                return left
            prec, right_assoc = _BINOPS[tok.value]
            if prec < min_prec:
                return left
            self.next()
            mod = self.peek()
            if mod.kind == "ident" and mod.value == "bool":
                raise LogQLUnsupportedError("the bool modifier")
            if mod.kind == "ident" and mod.value in ("on", "ignoring", "group_left", "group_right"):
                raise LogQLUnsupportedError(f"{mod.value}(...) vector matching")
            right = self.expr(prec if right_assoc else prec + 1)
            left = self.binop(tok, left, right)

    def binop(self, tok: _Tok, left: Expr, right: Expr) -> BinaryOp:
        if isinstance(left, LogQuery) or isinstance(right, LogQuery):
            raise self.error_at(
                tok,
                f'syntax error: "{tok.value}" needs metric queries or numbers on both sides; '
                "wrap a log query in a range aggregation such as count_over_time({...}[5m])",
            )
        assert not isinstance(left, LogQuery) and not isinstance(right, LogQuery)
        node = BinaryOp(_ARITH_OPS[tok.value], left, right)
        self.deeper(node, left, right)
        return node

    def unary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "op" and tok.value in ("+", "-"):
            num = self.peek(1)
            if num.kind != "num":
                self.fail(num, f'a number after the sign "{tok.value}"')
            self.next()
            self.next()
            value = float(num.text)
            return NumberLiteral(-value if tok.value == "-" else value)
        return self.primary()

    def primary(self) -> Expr:
        tok = self.peek()
        if tok.kind == "num":
            self.next()
            return NumberLiteral(float(tok.text))
        if tok.kind == "op" and tok.value == "{":
            return self.log_query()
        if tok.kind == "op" and tok.value == "(":
            self.next()
            inner = self.expr(0)
            self.expect_op(")", '")"')
            return inner
        if tok.kind == "ident":
            name = tok.value
            if name in _RANGE_OPS:
                return self.range_aggregation()
            if name in _VECTOR_OPS:
                return self.vector_aggregation()
            if name in _UNSUPPORTED_FUNCS:
                raise LogQLUnsupportedError(_UNSUPPORTED_FUNCS[name])
        self.fail(tok, _PRIMARY_EXPECTED)

    def range_aggregation(self) -> RangeAggregation:
        name_tok = self.next()
        op = _RANGE_OPS[name_tok.value]
        self.expect_op("(", f'"(" after {op}')
        query, range_ns = self.log_range()
        self.expect_op(")", '")"')
        if self.at_ident("by", "without"):
            raise self.error_at(
                self.peek(),
                f"syntax error: grouping not allowed for {op} aggregation; "
                f"use sum by (...) ({op}(...)) instead",
            )
        node = RangeAggregation(op, query, range_ns)
        exprs = [st.expr for st in query.pipeline if isinstance(st, LabelFilter)]
        self.deeper(node, *exprs)
        return node

    def log_range(self) -> tuple[LogQuery, int]:
        if self.at_op("("):
            self.next()
            query = self.log_query()
            self.expect_op(")", '")"')
            return query, self.range()
        selector = self.selector()
        if self.peek().kind == "range":
            range_ns = self.range()
            return LogQuery(selector, self.pipeline()), range_ns
        stages = self.pipeline()
        if self.peek().kind != "range":
            self.fail(self.peek(), "a pipeline stage or a range such as [5m]")
        return LogQuery(selector, stages), self.range()

    def range(self) -> int:
        tok = self.next()
        try:
            range_ns = parse_duration(tok.value)
        except QueryError:
            raise self.error_at(
                tok, f"syntax error: invalid range {tok.text}: use a duration such as [5m] or [1h]"
            ) from None
        if range_ns <= 0:
            raise self.error_at(tok, f"syntax error: invalid range {tok.text}: it must be > 0")
        if self.at_ident("offset"):
            raise LogQLUnsupportedError("the offset modifier")
        return range_ns

    def grouping(self) -> Grouping | None:
        if not self.at_ident("by", "without"):
            return None
        without = self.next().value == "without"
        self.expect_op("(", '"(" after by/without')
        labels: list[str] = []
        if not self.at_op(")"):
            while True:
                labels.append(self.expect_ident("a label name").value)
                if not self.at_op(","):
                    break
                self.next()
        self.expect_op(")", '"," or ")"')
        return Grouping(without, tuple(labels))

    def vector_aggregation(self) -> VectorAggregation:
        name_tok = self.next()
        op = _VECTOR_OPS[name_tok.value]
        grouping = self.grouping()
        self.expect_op("(", f'"(" after {op}')
        param: float | None = None
        if op in ("topk", "bottomk"):
            k_tok = self.peek()
            if k_tok.kind != "num":
                self.fail(k_tok, f"the number of series to keep, as in {op}(5, ...)")
            self.next()
            k = float(k_tok.text)
            if not k.is_integer() or k <= 0:
                raise self.error_at(
                    k_tok,
                    f"syntax error: invalid parameter {op}({k_tok.text}, ...): "
                    "it must be a positive integer",
                )
            param = k
            self.expect_op(",", f'"," after the parameter of {op}')
        elif self.peek().kind == "num" and self.peek(1).kind == "op" and self.peek(1).value == ",":
            raise self.error_at(
                self.peek(), f"syntax error: {op} takes no parameter (only topk and bottomk do)"
            )
        inner_tok = self.peek()
        inner = self.expr(0)
        if not _is_vector(inner):
            raise self.error_at(
                inner_tok,
                f"syntax error: {op}(...) needs a metric query inside, such as "
                "count_over_time({...}[5m]), not a log query or a number",
            )
        assert not isinstance(inner, LogQuery)
        self.expect_op(")", '")"')
        after = self.grouping()
        if after is not None:
            if grouping is not None:
                raise self.error_at(name_tok, f"syntax error: {op} has two by/without clauses")
            grouping = after
        node = VectorAggregation(op, inner, grouping, param)
        self.deeper(node, inner)
        return node

    # ------------------------------------------------------------ log queries

    def log_query(self) -> LogQuery:
        selector = self.selector()
        return LogQuery(selector, self.pipeline())

    def selector(self) -> Selector:
        open_tok = self.expect_op("{", "a stream selector {...}")
        matchers: list[Matcher] = []
        if not self.at_op("}"):
            while True:
                matchers.append(self.matcher())
                if self.at_op(","):
                    self.next()
                    continue
                if self.at_op("}"):
                    break
                self.fail(self.peek(), '"," or "}"')
        self.next()
        if not any(not compile_matcher(m)("") for m in matchers):
            raise self.error_at(open_tok, _EMPTY_COMPATIBLE)
        return Selector(tuple(matchers))

    def matcher(self) -> Matcher:
        name = self.expect_ident("a label matcher").value
        op_tok = self.peek()
        if op_tok.kind != "op" or op_tok.value not in _MATCH_OPS:
            self.fail(op_tok, "a matcher operator (= != =~ !~)")
        self.next()
        value_tok = self.expect_string("a quoted string")
        if op_tok.value in ("=~", "!~"):
            self.check_regex(value_tok)
        return Matcher(name, _MATCH_OPS[op_tok.value], value_tok.value)

    def pipeline(self) -> tuple[Stage, ...]:
        stages: list[Stage] = []
        while True:
            tok = self.peek()
            if tok.kind != "op":
                break
            if tok.value in _LINE_FILTER_OPS:
                stages.append(self.line_filter())
            elif tok.value in ("|>", "!>"):
                raise LogQLUnsupportedError(f"the pattern line filter {tok.value}")
            elif tok.value == "|":
                self.next()
                stages.append(self.stage())
            else:
                break
        return tuple(stages)

    def line_filter(self) -> LineFilter:
        op = _LINE_FILTER_OPS[self.next().value]
        tok = self.peek()
        if tok.kind == "ident" and tok.value == "ip":
            raise LogQLUnsupportedError('the ip("...") line filter')
        value_tok = self.expect_string(f"a quoted string after {op}")
        if op in ("|~", "!~"):
            self.check_regex(value_tok)
        if self.at_ident("or"):
            raise LogQLUnsupportedError(f'"or" between line filter values ({op} "a" or "b")')
        return LineFilter(op, value_tok.value)

    def stage(self) -> Stage:
        tok = self.peek()
        if tok.kind == "ident":
            name = tok.value
            if name == "json":
                self.next()
                return JsonParser(self.extraction_params(json=True))
            if name == "logfmt":
                return self.logfmt()
            if name == "line_format":
                self.next()
                template = self.expect_string("a template string after line_format")
                self.check_template(template)
                return LineFormat(template.value)
            if name == "label_format":
                return self.label_format()
            if name in ("drop", "keep"):
                return self.drop_keep()
            if name in _UNSUPPORTED_STAGES:
                raise LogQLUnsupportedError(_UNSUPPORTED_STAGES[name])
            nxt = self.peek(1)
            if nxt.kind != "op" or nxt.value not in _CMP_OPS:
                self.fail(tok, _STAGE_EXPECTED)
            return LabelFilter(self.label_or())
        if tok.kind == "op" and tok.value == "(":
            return LabelFilter(self.label_or())
        self.fail(tok, _STAGE_EXPECTED)

    def check_template(self, tok: _Tok) -> None:
        try:
            compile_template(tok.value)
        except LogQLUnsupportedError:
            raise
        except QueryError as exc:
            raise self.error_at(tok, str(exc)) from None

    def extraction_params(self, json: bool) -> tuple[tuple[str, str], ...]:
        params: list[tuple[str, str]] = []
        if self.peek().kind != "ident":
            return ()
        while True:
            name = self.expect_ident("a label name").value
            if self.at_op("="):
                self.next()
                source_tok = self.expect_string('a quoted expression, as in name="path"')
                if json:
                    try:
                        parse_json_path(source_tok.value)
                    except QueryError as exc:
                        raise self.error_at(source_tok, str(exc)) from None
                params.append((name, source_tok.value))
            else:
                params.append((name, name))
            if not self.at_op(","):
                return tuple(params)
            self.next()

    def logfmt(self) -> LogfmtParser:
        self.next()
        strict = keep_empty = False
        while self.peek().kind == "flag":
            flag = self.next()
            if flag.value == "--strict":
                strict = True
            elif flag.value == "--keep-empty":
                keep_empty = True
            else:
                self.fail(flag, "--strict or --keep-empty")
        return LogfmtParser(strict, keep_empty, self.extraction_params(json=False))

    def label_format(self) -> LabelFormat:
        self.next()
        renames: list[tuple[str, str, bool]] = []
        seen: set[str] = set()
        while True:
            dst_tok = self.expect_ident("a label name, as in label_format dst=src")
            if dst_tok.value == "__error__":
                raise self.error_at(dst_tok, "syntax error: __error__ cannot be formatted")
            if dst_tok.value in seen:
                raise self.error_at(
                    dst_tok,
                    f"syntax error: multiple label name '{dst_tok.value}' not allowed in a "
                    "single format operation",
                )
            seen.add(dst_tok.value)
            self.expect_op("=", '"="')
            src = self.peek()
            if src.kind == "ident":
                renames.append((dst_tok.value, src.value, False))
            elif src.kind == "str":
                self.check_template(src)
                renames.append((dst_tok.value, src.value, True))
            else:
                self.fail(src, "a label name or a template string")
            self.next()
            if not self.at_op(","):
                return LabelFormat(tuple(renames))
            self.next()

    def drop_keep(self) -> DropLabels | KeepLabels:
        keyword = self.next().value
        names: list[str] = []
        matchers: list[Matcher] = []
        while True:
            name = self.expect_ident("a label name").value
            op_tok = self.peek()
            if op_tok.kind == "op" and op_tok.value in _MATCH_OPS:
                self.next()
                value_tok = self.expect_string("a quoted string")
                if op_tok.value in ("=~", "!~"):
                    self.check_regex(value_tok)
                matchers.append(Matcher(name, _MATCH_OPS[op_tok.value], value_tok.value))
            else:
                names.append(name)
            if not self.at_op(","):
                break
            self.next()
        if keyword == "drop":
            return DropLabels(tuple(names), tuple(matchers))
        return KeepLabels(tuple(names), tuple(matchers))

    # ------------------------------------------------------------ label filters

    def label_or(self) -> LabelExpr:
        self.enter()
        left = self.label_and()
        while self.at_ident("or"):
            self.next()
            right = self.label_and()
            left = LabelOr(left, right)
            self.deeper(left, left.left, right)
        self.nesting -= 1
        return left

    def label_and(self) -> LabelExpr:
        left = self.label_primary()
        while True:
            if self.at_ident("and") or self.at_op(","):
                self.next()
            elif not ((self.peek().kind == "ident" and not self.at_ident("or")) or self.at_op("(")):
                return left
            right = self.label_primary()
            left = LabelAnd(left, right)
            self.deeper(left, left.left, right)

    def label_primary(self) -> LabelExpr:
        if self.at_op("("):
            self.next()
            inner = self.label_or()
            self.expect_op(")", '")"')
            return inner
        name_tok = self.expect_ident('a label filter such as level="error" or status>=500')
        op_tok = self.peek()
        if op_tok.kind != "op" or op_tok.value not in _CMP_OPS:
            self.fail(op_tok, "a comparison operator (= != =~ !~ == > >= < <=)")
        self.next()
        op = _CMP_OPS[op_tok.value]
        tok = self.peek()
        if tok.kind == "ident" and tok.value == "ip":
            raise LogQLUnsupportedError('the ip("...") label filter')
        sign = ""
        if tok.kind == "op" and tok.value in ("+", "-") and self.peek(1).kind in ("num", "dur"):
            sign = "-" if tok.value == "-" else ""
            self.next()
            tok = self.peek()
        if tok.kind == "str" and not sign:
            if op in _ORDER_OPS:
                self.fail(tok, f"a number, a duration or a byte size after {op}")
            if op in ("=~", "!~"):
                self.check_regex(tok)
            self.next()
            return LabelCompare(name_tok.value, "=" if op == "==" else op, tok.value, "string")
        if tok.kind in ("num", "dur", "bytes"):
            if op in ("=~", "!~"):
                self.fail(tok, f"a quoted string after {op}")
            self.next()
            return LabelCompare(name_tok.value, op, sign + tok.text, _VALUE_KINDS[tok.kind])
        self.fail(
            tok,
            "a value: a quoted string, a number, a duration such as 10ms or a byte size "
            "such as 20KB",
        )


def _is_vector(expr: Expr) -> bool:
    if isinstance(expr, RangeAggregation | VectorAggregation):
        return True
    if isinstance(expr, BinaryOp):
        return _is_vector(expr.left) or _is_vector(expr.right)
    return False


def _collect_ranges(expr: Expr, out: list[RangeAggregation]) -> None:
    if isinstance(expr, RangeAggregation):
        if expr not in out:
            out.append(expr)
    elif isinstance(expr, VectorAggregation):
        _collect_ranges(expr.inner, out)
    elif isinstance(expr, BinaryOp):
        _collect_ranges(expr.left, out)
        _collect_ranges(expr.right, out)


@functools.lru_cache(maxsize=512)
def _parse_cached(text: str) -> ParsedQuery:
    expr = _Parser(text).query()
    ranges: list[RangeAggregation] = []
    _collect_ranges(expr, ranges)
    return ParsedQuery(text=text, expr=expr, range_aggregations=tuple(ranges))


def parse(text: str) -> ParsedQuery:
    """Parse a LogQL query of the core subset.

    `range_aggregations` lists every distinct RangeAggregation node of the tree, left to right
    (equal nodes, such as the same `rate(...)` used twice, appear once).

    Raises LogQLSyntaxError (with position and what was expected), LogQLUnsupportedError
    (naming a valid construct outside the subset) or QueryError (an invalid regex or template).
    """
    if not isinstance(text, str):
        raise QueryError(f"a LogQL query must be text, not {type(text).__name__}")
    return _parse_cached(text)


def metric_expr(parsed: ParsedQuery) -> MetricExpr:
    """The metric expression of a parsed query; QueryError when it is a log query."""
    if isinstance(parsed.expr, LogQuery):
        raise QueryError(
            "this is a log query, not a metric query: wrap it in a range aggregation such as "
            "count_over_time({...}[5m])"
        )
    return parsed.expr
