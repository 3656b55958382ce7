"""The LogQL parser (backend.logql.parser): every construct of the subset, error positions, and
every construct outside the subset refused by name."""

from __future__ import annotations

import pytest

from backend.errors import LogQLSyntaxError, LogQLUnsupportedError, QueryError
from backend.logql.ast import (
    BinaryOp,
    DropLabels,
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
    LineFormat,
    LogfmtParser,
    LogQuery,
    Matcher,
    NumberLiteral,
    RangeAggregation,
    Selector,
    Stage,
    VectorAggregation,
)
from backend.logql.parser import parse

S = 1_000_000_000
SEL = Selector((Matcher("app", "=", "api"),))


def log(text: str) -> LogQuery:
    expr = parse(text).expr
    assert isinstance(expr, LogQuery)
    return expr


def stages(pipeline: str) -> tuple[Stage, ...]:
    return log('{app="api"} ' + pipeline).pipeline


def label_expr(pipeline: str) -> LabelExpr:
    (stage,) = stages(pipeline)
    assert isinstance(stage, LabelFilter)
    return stage.expr


def s(name: str, value: str, op: str = "=") -> LabelCompare:
    return LabelCompare(name, op, value, "string")  # type: ignore[arg-type]


# ---------------------------------------------------------------- selectors and strings


def test_selector_with_all_matcher_ops() -> None:
    q = log('{a="1", b!="2", c=~"x|y", d!~"z.*"}')
    assert q.selector.matchers == (
        Matcher("a", "=", "1"),
        Matcher("b", "!=", "2"),
        Matcher("c", "=~", "x|y"),
        Matcher("d", "!~", "z.*"),
    )
    assert q.pipeline == ()
    assert parse('{a="1"}').is_log_query


@pytest.mark.parametrize(
    "text", ["{}", '{a=""}', '{a=~".*"}', '{a!="x"}', '{a!~"x"}', '{a=~".*", b=""}']
)
def test_selector_needs_a_non_empty_compatible_matcher(text: str) -> None:
    with pytest.raises(LogQLSyntaxError, match="at least one regexp or equality matcher") as exc:
        parse(text)
    assert (exc.value.line, exc.value.col) == (1, 1)
    assert isinstance(exc.value, QueryError)


@pytest.mark.parametrize("text", ['{a=~".+"}', '{a!=""}', '{a=~".*", b="x"}'])
def test_selector_accepts_a_matcher_that_rejects_empty(text: str) -> None:
    parse(text)


def test_go_string_escapes_and_raw_strings() -> None:
    q = log(r'{a="t\tq\"\\\x41\101\u00e9\U0001F600"} |= `raw\d+"`')
    assert q.selector.matchers[0].value == 't\tq"\\AA\u00e9\U0001f600'
    assert q.pipeline == (LineFilter("|=", 'raw\\d+"'),)
    assert log(r'{a="\xc3\xa9"}').selector.matchers[0].value == "é"  # byte escapes are UTF-8


def test_comments_and_newlines() -> None:
    q = log('# leading comment\n{app="api"} # after the selector\n  |= "x" # end')
    assert q == LogQuery(SEL, (LineFilter("|=", "x"),))


# ---------------------------------------------------------------- pipeline stages


def test_line_filters_chained() -> None:
    assert stages('|= "a" != "b" |~ "c+" !~ "d"') == (
        LineFilter("|=", "a"),
        LineFilter("!=", "b"),
        LineFilter("|~", "c+"),
        LineFilter("!~", "d"),
    )


def test_json_and_logfmt_parsers() -> None:
    assert stages("| json") == (JsonParser(),)
    assert stages('| json a="x.y[0]", b, c=`["k.z"]`') == (
        JsonParser((("a", "x.y[0]"), ("b", "b"), ("c", '["k.z"]'))),
    )
    assert stages("| logfmt") == (LogfmtParser(),)
    assert stages('| logfmt --strict --keep-empty host, ip="fwd"') == (
        LogfmtParser(True, True, (("host", "host"), ("ip", "fwd"))),
    )
    assert stages("| logfmt --keep-empty") == (LogfmtParser(keep_empty=True),)


def test_label_filter_value_kinds() -> None:
    assert label_expr('| level="error"') == s("level", "error")
    assert label_expr('| level=~"err.*"') == s("level", "err.*", "=~")
    assert label_expr("| status >= 500") == LabelCompare("status", ">=", "500", "number")
    assert label_expr("| status == 200") == LabelCompare("status", "==", "200", "number")
    assert label_expr("| status = 200") == LabelCompare("status", "=", "200", "number")
    assert label_expr("| x != 1.5e3") == LabelCompare("x", "!=", "1.5e3", "number")
    assert label_expr("| x > -1") == LabelCompare("x", ">", "-1", "number")
    assert label_expr("| d > 10ms") == LabelCompare("d", ">", "10ms", "duration")
    assert label_expr("| d <= 1.5h") == LabelCompare("d", "<=", "1.5h", "duration")
    assert label_expr("| d < 1h30m") == LabelCompare("d", "<", "1h30m", "duration")
    assert label_expr("| size > 20KB") == LabelCompare("size", ">", "20KB", "bytes")
    assert label_expr("| size >= 1.5KiB") == LabelCompare("size", ">=", "1.5KiB", "bytes")
    assert label_expr('| __error__=""') == s("__error__", "")


def test_label_filter_precedence_or_is_loosest() -> None:
    a, b, c = s("a", "1"), s("b", "2"), s("c", "3")
    assert label_expr('| a="1" or b="2" and c="3"') == LabelOr(a, LabelAnd(b, c))
    assert label_expr('| a="1", b="2" or c="3"') == LabelOr(LabelAnd(a, b), c)
    assert label_expr('| a="1" b="2" or c="3"') == LabelOr(LabelAnd(a, b), c)
    assert label_expr('| a="1" or b="2" c="3"') == LabelOr(a, LabelAnd(b, c))
    assert label_expr('| (a="1" or b="2") c="3"') == LabelAnd(LabelOr(a, b), c)
    assert label_expr('| a="1" and (b="2" or c="3")') == LabelAnd(a, LabelOr(b, c))
    assert label_expr('| a="1" and b="2" and c="3"') == LabelAnd(LabelAnd(a, b), c)


def test_formatting_and_label_set_stages() -> None:
    assert stages('| line_format "{{.msg}} {{ __line__ }}"') == (
        LineFormat("{{.msg}} {{ __line__ }}"),
    )
    assert stages('| label_format dst=src, dst2="{{.a}}"') == (
        LabelFormat((("dst", "src", False), ("dst2", "{{.a}}", True))),
    )
    assert stages('| drop a, b="v", c=~"re.*"') == (
        DropLabels(("a",), (Matcher("b", "=", "v"), Matcher("c", "=~", "re.*"))),
    )
    assert stages("| keep a, b") == (KeepLabels(("a", "b")),)


def test_full_pipeline_order_is_kept() -> None:
    got = stages('|= "x" | json | level="error" | line_format "{{.msg}}" |= "y" | keep level')
    assert [type(st).__name__ for st in got] == [
        "LineFilter",
        "JsonParser",
        "LabelFilter",
        "LineFormat",
        "LineFilter",
        "KeepLabels",
    ]


# ---------------------------------------------------------------- metric queries


def rng(op: str, pipeline: tuple[Stage, ...] = (), range_ns: int = 300 * S) -> RangeAggregation:
    return RangeAggregation(op, LogQuery(SEL, pipeline), range_ns)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "op", ["count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time"]
)
def test_range_aggregations(op: str) -> None:
    assert parse(f'{op}({{app="api"}}[5m])').expr == rng(op)


def test_range_position_variants_are_equal() -> None:
    want = rng("count_over_time", (LineFilter("|=", "x"), JsonParser()))
    assert parse('count_over_time({app="api"} |= "x" | json [5m])').expr == want
    assert parse('count_over_time({app="api"}[5m] |= "x" | json)').expr == want
    assert parse('count_over_time(({app="api"} |= "x" | json)[5m])').expr == want
    assert parse('count_over_time({app="api"} |= "x" | json [ 5m ])').expr == want


def test_range_durations() -> None:
    assert parse('rate({app="api"}[1h30m])').expr == rng("rate", range_ns=5400 * S)
    assert parse('rate({app="api"}[250ms])').expr == rng("rate", range_ns=250_000_000)
    assert parse('rate({app="api"}[1d])').expr == rng("rate", range_ns=86400 * S)


@pytest.mark.parametrize("op", ["sum", "avg", "min", "max", "count"])
def test_vector_aggregations_grouping_before_or_after(op: str) -> None:
    inner = rng("rate")
    by = Grouping(False, ("a", "b"))
    assert parse(f'{op}(rate({{app="api"}}[5m]))').expr == VectorAggregation(op, inner)  # type: ignore[arg-type]
    before = parse(f'{op} by (a, b) (rate({{app="api"}}[5m]))').expr
    after = parse(f'{op}(rate({{app="api"}}[5m])) by (a, b)').expr
    assert before == after == VectorAggregation(op, inner, by)  # type: ignore[arg-type]
    without = parse(f'{op} without (a) (rate({{app="api"}}[5m]))').expr
    assert without == VectorAggregation(op, inner, Grouping(True, ("a",)))  # type: ignore[arg-type]
    empty = parse(f'{op} by () (rate({{app="api"}}[5m]))').expr
    assert empty == VectorAggregation(op, inner, Grouping(False, ()))  # type: ignore[arg-type]


def test_topk_and_bottomk() -> None:
    inner = rng("count_over_time")
    assert parse('topk(5, count_over_time({app="api"}[5m]))').expr == VectorAggregation(
        "topk", inner, None, 5.0
    )
    assert parse('bottomk by (x) (3, count_over_time({app="api"}[5m]))').expr == (
        VectorAggregation("bottomk", inner, Grouping(False, ("x",)), 3.0)
    )


def test_nested_aggregation() -> None:
    got = parse('topk(3, sum by (agent) (count_over_time({app="api"} | json [5m])))').expr
    assert isinstance(got, VectorAggregation) and got.op == "topk"
    assert isinstance(got.inner, VectorAggregation) and got.inner.op == "sum"
    assert got.inner.inner == rng("count_over_time", (JsonParser(),))


def n(v: float) -> NumberLiteral:
    return NumberLiteral(v)


def test_arithmetic_precedence() -> None:
    assert parse("1 + 2 * 3").expr == BinaryOp("+", n(1), BinaryOp("*", n(2), n(3)))
    assert parse("1 - 2 - 3").expr == BinaryOp("-", BinaryOp("-", n(1), n(2)), n(3))
    assert parse("2 ^ 3 ^ 2").expr == BinaryOp("^", n(2), BinaryOp("^", n(3), n(2)))
    assert parse("2 * 3 ^ 2").expr == BinaryOp("*", n(2), BinaryOp("^", n(3), n(2)))
    assert parse("(1 + 2) * 3").expr == BinaryOp("*", BinaryOp("+", n(1), n(2)), n(3))
    assert parse("10 % 3 / 2").expr == BinaryOp("/", BinaryOp("%", n(10), n(3)), n(2))
    assert parse("-1 + +2.5").expr == BinaryOp("+", n(-1), n(2.5))
    assert parse("1-1").expr == BinaryOp("-", n(1), n(1))
    assert parse("42").expr == n(42)


def test_binary_between_metrics_and_range_aggregation_list() -> None:
    text = 'sum(rate({app="api"} |= "error" [5m])) / sum(rate({app="api"}[5m])) * 100'
    parsed = parse(text)
    assert isinstance(parsed.expr, BinaryOp) and parsed.expr.op == "*"
    assert parsed.range_aggregations == (
        rng("rate", (LineFilter("|=", "error"),)),
        rng("rate"),
    )
    assert not parsed.is_log_query
    same = parse('rate({app="api"}[5m]) / rate({app="api"}[5m])')
    assert same.range_aggregations == (rng("rate"),)  # equal nodes listed once


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(" * 100 + "1" + ")" * 100, "nests more than 64 levels"),
        ("^".join(["2"] * 200), "nests more than 64 levels"),
        ("+".join(["1"] * 500), "more than 128 levels of operators"),
        ('{a="b"} | ' + " or ".join(['x="1"'] * 500), "more than 128 levels of operators"),
        ('{a="b"} | ' + "(" * 100 + 'x="1"' + ")" * 100, "nests more than 64 levels"),
    ],
)
def test_absurd_nesting_is_refused_not_a_crash(text: str, message: str) -> None:
    with pytest.raises(LogQLSyntaxError, match=message):
        parse(text)
    parse("+".join(["1"] * 100))  # long but reasonable chains are fine
    parse('{a="b"} | ' + " or ".join(['x="1"'] * 100))


def test_parse_is_cached_and_rejects_non_text() -> None:
    assert parse('{app="api"}') is parse('{app="api"}')
    with pytest.raises(QueryError):
        parse(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("text", "line", "col", "expected"),
    [
        ('{a="b",}', 1, 8, "a label matcher"),
        ('{a="b"', 1, 7, '"," or "}"'),
        ("{a=b}", 1, 4, "a quoted string"),
        ('{a=="b"}', 1, 3, "a matcher operator (= != =~ !~)"),
        ('{a="b"}\n  | foo', 2, 5, "a parser"),
        ('{a="b"} |= ', 1, 12, "a quoted string after |="),
        ('{a="b"} | x > "s"', 1, 15, "a number, a duration or a byte size after >"),
        ('rate({a="b"})', 1, 13, "a pipeline stage or a range such as [5m]"),
        ('sum(rate({a="b"}[5m])', 1, 22, '")"'),
        ("", 1, 1, "a stream selector"),
        ('{a="b"} {c="d"}', 1, 9, "a pipeline stage"),
        ('rate({a="b"}[5m]) rate', 1, 19, "an operator"),
        ('{a="b"} | label_format x', 1, 25, '"="'),
    ],
)
def test_syntax_error_positions(text: str, line: int, col: int, expected: str) -> None:
    with pytest.raises(LogQLSyntaxError) as exc:
        parse(text)
    err = exc.value
    assert (err.line, err.col) == (line, col), str(err)
    assert expected in err.expected
    assert str(err).startswith(f"parse error at line {line}, col {col}: syntax error: unexpected")


def test_unknown_identifiers_are_named() -> None:
    with pytest.raises(LogQLSyntaxError, match='unexpected identifier "frobnicate"'):
        parse('frobnicate({a="b"}[5m])')
    with pytest.raises(LogQLSyntaxError, match='unexpected identifier "frob"') as exc:
        parse('{a="b"} | frob')
    assert exc.value.col == 11


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{a="b"}[5m]', "only allowed inside a range aggregation"),
        ('{a="b"} + 1', "needs metric queries or numbers on both sides"),
        ("sum(1)", "needs a metric query inside"),
        ('sum({a="b"})', "needs a metric query inside"),
        ('topk(0, rate({a="b"}[1m]))', "positive integer"),
        ('topk(1.5, rate({a="b"}[1m]))', "positive integer"),
        ('sum(5, rate({a="b"}[1m]))', "takes no parameter"),
        ('count_over_time({a="b"}[5m]) by (x)', "grouping not allowed for count_over_time"),
        ('sum by (a) (rate({a="b"}[5m])) by (b)', "two by/without"),
        ('rate({a="b"}[0s])', "it must be > 0"),
        ('rate({a="b"}[5x])', "invalid range [5x]"),
        ('{a="b"} | json | x > 10zz', 'invalid number "10zz"'),
        (r'{a="\q"}', r"unknown escape sequence \q"),
        ('{a="b', "unterminated string"),
        ("{a=`b", "unterminated raw string"),
        ('rate({a="b"}[5m', "unterminated range"),
        ('{a="b"} @ 1', "unexpected character '@'"),
        ('{a="b"} | label_format x=y, x="z"', "multiple label name 'x'"),
        ('{a="b"} | label_format __error__=x', "__error__ cannot be formatted"),
        ('{a="b"} | logfmt --fast', "--strict or --keep-empty"),
    ],
)
def test_syntax_errors_in_plain_words(text: str, message: str) -> None:
    with pytest.raises(LogQLSyntaxError) as exc:
        parse(text)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("text", "col"),
    [
        ('{a=~"("}', 5),
        ('{a="b"} |~ "a**"', 12),
        ('{a="b"} | x=~"[a"', 14),
        ('{a="b"} |~ "\\\\1"', 12),
    ],
)
def test_invalid_regex_is_a_positioned_error_naming_it(text: str, col: int) -> None:
    with pytest.raises(LogQLSyntaxError, match="invalid regular expression") as exc:
        parse(text)
    assert exc.value.col == col


def test_invalid_template_and_json_path_are_positioned_errors() -> None:
    with pytest.raises(LogQLSyntaxError, match="invalid template") as exc:
        parse('{a="b"} | line_format "{{.a"')
    assert exc.value.col == 23
    with pytest.raises(LogQLSyntaxError, match="cannot parse JSON expression"):
        parse('{a="b"} | json x="a..b"')


# ---------------------------------------------------------------- outside the subset


@pytest.mark.parametrize(
    ("text", "construct"),
    [
        ('{a="b"} | regexp "(?P<x>.*)"', "| regexp"),
        ('{a="b"} | pattern "<x> <_>"', "| pattern"),
        ('{a="b"} | unpack', "| unpack"),
        ('{a="b"} | decolorize', "| decolorize"),
        ('{a="b"} | distinct x', "| distinct"),
        ('count_over_time({a="b"} | unwrap x [5m])', "| unwrap"),
        ('sum_over_time({a="b"} | unwrap x [5m])', "sum_over_time"),
        ('avg_over_time({a="b"} | unwrap x [5m])', "avg_over_time"),
        ('min_over_time({a="b"} | unwrap x [5m])', "min_over_time"),
        ('max_over_time({a="b"} | unwrap x [5m])', "max_over_time"),
        ('quantile_over_time(0.9, {a="b"} | unwrap x [5m])', "quantile_over_time"),
        ('first_over_time({a="b"} | unwrap x [5m])', "first_over_time"),
        ('rate_counter({a="b"} | unwrap x [5m])', "rate_counter"),
        ('rate({a="b"}[5m] offset 1h)', "offset"),
        ('{a="b"} |> "<_> error"', "pattern line filter |>"),
        ('{a="b"} !> "<_> error"', "pattern line filter !>"),
        ('{a="b"} |= ip("10.0.0.0/8")', "ip"),
        ('{a="b"} | addr = ip("10.0.0.0/8")', "ip"),
        ('{a="b"} |= "a" or "b"', '"or" between line filter values'),
        ('rate({a="b"}[5m]) > 1', "comparison operator >"),
        ('rate({a="b"}[5m]) == 1', "comparison operator =="),
        ('rate({a="b"}[5m]) != 1', "comparison operator !="),
        ('rate({a="b"}[5m]) <= 1', "comparison operator <="),
        ('rate({a="b"}[5m]) and rate({a="c"}[5m])', "the and operator"),
        ('rate({a="b"}[5m]) or rate({a="c"}[5m])', "the or operator"),
        ('rate({a="b"}[5m]) unless rate({a="c"}[5m])', "the unless operator"),
        ('rate({a="b"}[5m]) + bool 1', "bool"),
        ('rate({a="b"}[5m]) / on(x) rate({a="c"}[5m])', "on(...)"),
        ('rate({a="b"}[5m]) / ignoring(x) rate({a="c"}[5m])', "ignoring(...)"),
        ('rate({a="b"}[5m]) / group_left rate({a="c"}[5m])', "group_left"),
        ('label_replace(rate({a="b"}[5m]), "d", "$1", "s", "(.*)")', "label_replace"),
        ("vector(1)", "vector()"),
        ('sort(rate({a="b"}[5m]))', "sort()"),
        ('sort_desc(rate({a="b"}[5m]))', "sort_desc()"),
        ('stddev(rate({a="b"}[5m]))', "stddev"),
        ('stdvar(rate({a="b"}[5m]))', "stdvar"),
        ('approx_topk(3, rate({a="b"}[5m]))', "approx_topk"),
        ('{a="b"} | line_format "{{ if .a }}x{{ end }}"', "template action {{if}}"),
        ('{a="b"} | line_format "{{ .a | b64enc }}"', "template function b64enc"),
        ('{a="b"} | line_format "{{ __timestamp__ }}"', "template function __timestamp__"),
        ('{a="b"} | label_format x="{{ $v := 1 }}"', "template variable"),
    ],
)
def test_unsupported_constructs_are_named(text: str, construct: str) -> None:
    with pytest.raises(LogQLUnsupportedError) as exc:
        parse(text)
    assert construct in exc.value.construct
    assert "is not supported by this store" in str(exc.value)
    assert isinstance(exc.value, QueryError)
