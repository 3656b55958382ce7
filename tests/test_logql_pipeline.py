"""The log pipeline (backend.logql.pipeline): matchers, line filters, parsers, label filters,
formatting and label-set stages, with Loki's semantics."""

from __future__ import annotations

import pytest

from backend.errors import LogQLUnsupportedError, QueryError
from backend.logql.ast import JsonParser, LineFilter, LogQuery, Matcher, Stage
from backend.logql.parser import parse
from backend.logql.pipeline import (
    Pipeline,
    compile_matcher,
    compile_pipeline,
    compile_regex,
    compile_template,
    parse_bytes,
    pushdown_line_filters,
)

Labels = dict[str, str]


def pipe(text: str) -> Pipeline:
    expr = parse('{app="api"} ' + text).expr
    assert isinstance(expr, LogQuery)
    return compile_pipeline(expr.pipeline)


def run(text: str, line: str, labels: Labels | None = None) -> tuple[str, Labels] | None:
    return pipe(text).process(line, {"app": "api"} if labels is None else labels)


def out_labels(text: str, line: str, labels: Labels | None = None) -> Labels:
    got = run(text, line, labels)
    assert got is not None, "the line was filtered out"
    return got[1]


# ---------------------------------------------------------------- matchers and regexes


def test_compile_matcher_equality_and_absent_labels() -> None:
    eq = compile_matcher(Matcher("a", "=", "x"))
    assert eq("x") and not eq("y") and not eq(None)
    ne = compile_matcher(Matcher("a", "!=", "x"))
    assert ne("y") and ne(None) and not ne("x")
    empty = compile_matcher(Matcher("a", "=", ""))
    assert empty(None) and empty("") and not empty("x")


def test_compile_matcher_regex_is_fully_anchored() -> None:
    rx = compile_matcher(Matcher("a", "=~", "ab|cd"))
    assert rx("ab") and rx("cd") and not rx("xabx") and not rx("abc")
    rx2 = compile_matcher(Matcher("a", "=~", "a.c"))
    assert rx2("abc") and not rx2("zabc") and not rx2("abcz")
    nrx = compile_matcher(Matcher("a", "!~", "a.+"))
    assert nrx("a") and nrx(None) and not nrx("ab")
    dot = compile_matcher(Matcher("a", "=~", ".*"))
    assert dot(None) and dot("anything")
    lit = compile_matcher(Matcher("a", "=~", "prod"))
    assert lit("prod") and not lit("production")


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"\d+", "٣", False),  # RE2's \d is ASCII only
        (r"\w+", "é", False),
        (r"\s", "\u2003", False),
        (r"\d+", "123", True),
        ("abc$", "abc\n", False),  # $ is the end of the text in RE2
        ("(?m)abc$", "abc\n", True),
        ("a(?i)bc", "aBC", True),
        ("a(?i)bc", "ABC", False),
        ("ab(?i)c|d", "D", True),  # (?i) holds to the end of the group, across |
        ("ab(?i)c|d", "ABC", False),
        (r"\Qa.b\E", "a.b", True),
        (r"\Qa.b\E", "axb", False),
        (r"\x{41}\101\x42", "AAB", True),
        ("[[:digit:]]+x", "12x", True),
        ("[[:alpha:]]", "1", False),
        ("(?P<n>x)(?<m>y)", "xy", True),
        ("x{,3}", "x{,3}", True),  # not a repeat in RE2: literal braces
        (r"\bfoo\b", "éfooé", True),  # \b is an ASCII word boundary
    ],
)
def test_re2_translation(pattern: str, text: str, matches: bool) -> None:
    assert (compile_regex(pattern).search(text) is not None) is matches


@pytest.mark.parametrize(
    "pattern",
    ["(", "a)", "[a", "(?=x)", "(?<=x)y", "(?>x)", "a*+", "a**", r"\1", r"\pL", "(?U)a", r"\Z",
     "(?P=n)", "[[:^alpha:]]", "x{1001}", r"\e"],
)  # fmt: skip
def test_invalid_or_non_re2_regexes_are_query_errors_naming_them(pattern: str) -> None:
    with pytest.raises(QueryError, match="invalid regular expression") as exc:
        compile_regex(pattern)
    assert pattern.replace("\\", "\\\\") in str(exc.value)
    with pytest.raises(QueryError):
        compile_matcher(Matcher("a", "=~", pattern))


# ---------------------------------------------------------------- line filters


def test_contains_filter_fast_path_and_case_sensitivity() -> None:
    p = pipe('|= "Error"')
    labels = {"app": "api"}
    got = p.process("an Error here", labels)
    assert got is not None and got[1] is labels  # nothing copied on the hot path
    assert p.process("an error here", labels) is None
    assert not p.needs_labels and not p.is_noop


def test_line_filters_chain_left_to_right() -> None:
    p = pipe('|= "a" != "b" |~ "c[0-9]" !~ "d+"')
    assert p.process("a c1", {}) is not None
    assert p.process("a b c1", {}) is None
    assert p.process("a c", {}) is None
    assert p.process("a c1 dd", {}) is None
    assert p.process("x c1", {}) is None


def test_regex_line_filter_is_unanchored_and_case_flag_works() -> None:
    assert run('|~ "err(or)?"', "an error") is not None
    assert run('|~ "(?i)ERROR"', "an error") is not None
    assert run('|~ "ERROR"', "an error") is None


def test_empty_filters() -> None:
    assert run('|= ""', "x") is not None
    assert run('!= ""', "x") is None  # as Loki: not(contains "") drops everything


def test_noop_pipeline_returns_its_input() -> None:
    p = compile_pipeline(())
    labels = {"a": "b"}
    assert p.is_noop and not p.needs_labels
    got = p.process("line", labels)
    assert got == ("line", labels) and got[1] is labels


def test_line_filter_after_line_format_sees_the_new_line() -> None:
    text = '| logfmt | line_format "{{.msg}}" |= "hello"'
    assert run(text, "level=info msg=hello") is not None
    assert run(text, "level=hello msg=bye") is None


# ---------------------------------------------------------------- json


def test_json_flattens_nested_objects_and_skips_arrays() -> None:
    line = (
        '{"level":"error","n":{"ms":1.50,"deep":{"k":"v"},"list":[1,2]},"ok":true,'
        '"off":false,"none":null,"big":12345678901234567890,"esc":"a\\"b\\u00e9"}'
    )
    assert out_labels("| json", line, {}) == {
        "level": "error",
        "n_ms": "1.50",  # numbers as written
        "n_deep_k": "v",
        "ok": "true",
        "off": "false",
        "none": "",
        "big": "12345678901234567890",
        "esc": 'a"bé',
    }


def test_json_sanitises_names_and_suffixes_clashes() -> None:
    line = '{"app":"from-line","a-b.c":1,"1st":2," sp ":3,"x":{"y-z":4},"ü":5}'
    labels = {"app": "api"}
    got = out_labels("| json", line, labels)
    assert got == {
        "app": "api",
        "app_extracted": "from-line",
        "a_b_c": "1",
        "_1st": "2",
        "sp": "3",
        "x_y_z": "4",
        "_": "5",
    }
    assert labels == {"app": "api"}  # the input dict is never mutated


@pytest.mark.parametrize("line", ["not json", "", "[1,2]", '"str"', '{"a":', "{'a': 1}", "NaN"])
def test_json_failure_keeps_the_line_with_error_labels(line: str) -> None:
    got = run("| json", line)
    assert got is not None
    assert got[0] == line
    assert got[1]["__error__"] == "JSONParserErr"
    assert got[1]["__error_details__"]
    assert got[1]["app"] == "api"


def test_json_with_params() -> None:
    line = '{"a":{"b":[10,{"c":"deep"}]},"obj":{"k":1.0,"l":[true,null]},"s":"x","app":"y"}'
    got = out_labels(
        '| json first="a.b[0]", deep="a.b[1].c", o="obj", br=`["s"]`, missing="q.r", s, app',
        line,
    )
    assert got == {
        "app": "api",
        "first": "10",
        "deep": "deep",
        "o": '{"k":1.0,"l":[true,null]}',
        "br": "x",
        "missing": "",
        "s": "x",
        "app_extracted": "y",
    }


def test_json_params_on_a_non_json_line() -> None:
    got = out_labels('| json x="a"', "plain text")
    assert got["__error__"] == "JSONParserErr"
    assert "x" not in got


# ---------------------------------------------------------------- logfmt


def test_logfmt_basic_quoted_and_escaped() -> None:
    line = 'level=info msg="hello \\"world\\"" path=/a/b dur=1.5s app=x t="tab\\there"'
    assert out_labels("| logfmt", line) == {
        "app": "api",
        "level": "info",
        "msg": 'hello "world"',
        "path": "/a/b",
        "dur": "1.5s",
        "app_extracted": "x",
        "t": "tab\there",
    }


def test_logfmt_empty_values_need_keep_empty() -> None:
    line = 'a=1 empty= standalone quoted=""'
    assert out_labels("| logfmt", line, {}) == {"a": "1"}
    assert out_labels("| logfmt --keep-empty", line, {}) == {
        "a": "1",
        "empty": "",
        "standalone": "",
        "quoted": "",
    }


def test_logfmt_skips_malformed_pairs_unless_strict() -> None:
    line = 'a=1 bad"x c=2 =oops d=4'
    assert out_labels("| logfmt", line, {}) == {"a": "1", "c": "2", "d": "4"}
    strict = out_labels("| logfmt --strict", line, {})
    assert strict["a"] == "1"
    assert strict["__error__"] == "LogfmtParserErr"
    assert "unexpected" in strict["__error_details__"]
    assert "c" not in strict  # strict stops at the first error


def test_logfmt_unterminated_quote() -> None:
    assert out_labels("| logfmt", 'a=1 b="open', {}) == {"a": "1"}
    got = out_labels("| logfmt --strict", 'a=1 b="open', {})
    assert got["__error__"] == "LogfmtParserErr"
    assert "unterminated quoted value" in got["__error_details__"]


def test_logfmt_with_params() -> None:
    got = out_labels('| logfmt lvl="level", msg', "level=warn msg=hi other=1", {"msg": "s"})
    assert got == {"msg": "s", "lvl": "warn", "msg_extracted": "hi"}
    assert out_labels('| logfmt x="nope"', "level=warn", {}) == {"x": ""}


# ---------------------------------------------------------------- label filters


def test_string_label_filters_treat_absent_as_empty() -> None:
    assert run('| level="error"', "x", {"level": "error"}) is not None
    assert run('| level="error"', "x", {}) is None
    assert run('| level!="error"', "x", {}) is not None
    assert run('| level=""', "x", {}) is not None
    assert run('| level=~"err|warn"', "x", {"level": "warn"}) is not None
    assert run('| level=~"err"', "x", {"level": "error"}) is None  # anchored
    assert run('| level!~"err.*"', "x", {"level": "info"}) is not None


@pytest.mark.parametrize(
    ("flt", "value", "kept"),
    [
        ("status >= 500", "503", True),
        ("status >= 500", "404", False),
        ("status == 200", "200.0", True),
        ("status = 200", "200", True),
        ("status != 200", "201", True),
        ("status < 1e3", "999", True),
        ("status <= -1", "-1", True),
        ("d > 1s", "1500ms", True),
        ("d > 1s", "900ms", False),
        ("d >= 1.5h", "1h30m", True),
        ("d < 10ms", "9.9ms", True),
        ("size > 1KB", "1.5KiB", True),
        ("size > 20KB", "19999", False),
        ("size == 1KiB", "1024", True),
        ("size <= 1MB", "1 MB", True),
    ],
)
def test_number_duration_bytes_filters(flt: str, value: str, kept: bool) -> None:
    name = flt.split()[0]
    assert (run(f"| {flt}", "x", {name: value}) is not None) is kept


def test_conversion_failure_keeps_line_with_label_filter_err() -> None:
    got = out_labels("| status >= 500", "x", {"status": "abc"})
    assert got["__error__"] == "LabelFilterErr"
    assert "abc" in got["__error_details__"]
    got = out_labels("| d > 1s", "x", {"d": "1d"})  # Go durations have no days
    assert got["__error__"] == "LabelFilterErr"
    assert out_labels("| size > 1KB", "x", {"size": "big"})["__error__"] == "LabelFilterErr"


def test_numeric_filter_drops_lines_without_the_label() -> None:
    assert run("| status >= 500", "x", {}) is None
    assert run("| status != 200", "x", {}) is None


def test_after_an_error_only_string_filters_can_drop() -> None:
    assert run("| json | status > 500", "not json") is not None  # passes: error already set
    assert run('| json | __error__=""', "not json") is None
    assert run('| json | __error__=""', '{"a":1}') is not None
    assert run('| json | __error__!="JSONParserErr"', "not json") is None


def test_or_binds_looser_than_and_comma_and_whitespace() -> None:
    text = '| a="1" or b="2", c="3"'
    assert run(text, "x", {"a": "1"}) is not None
    assert run(text, "x", {"b": "2"}) is None  # b and c both needed
    assert run(text, "x", {"b": "2", "c": "3"}) is not None
    ws = '| a="1" or b="2" c="3"'
    assert run(ws, "x", {"b": "2"}) is None
    assert run(ws, "x", {"b": "2", "c": "3"}) is not None
    grouped = '| (a="1" or b="2") c="3"'
    assert run(grouped, "x", {"a": "1"}) is None
    assert run(grouped, "x", {"a": "1", "c": "3"}) is not None


# ---------------------------------------------------------------- formatting


def test_line_format_fields_missing_labels_and_line() -> None:
    got = run('| line_format "{{.level}}: {{ .msg }} [{{.missing}}] <{{__line__}}>"', "raw",
              {"level": "warn", "msg": "hi"})  # fmt: skip
    assert got == ("warn: hi [] <raw>", {"level": "warn", "msg": "hi"})


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ .a | ToUpper }}", "MIXED CASE"),
        ("{{ upper .a }}", "MIXED CASE"),
        ("{{ .a | lower }}", "mixed case"),
        ("{{ ToLower .a }}", "mixed case"),
        ("{{ .pad | trim }}", "p"),
        ("{{ TrimSpace .pad }}", "p"),
        ('{{ .none | default "n/a" }}', "n/a"),
        ('{{ default "n/a" .a }}', "MIXED case"),
        ('{{ .a | replace "case" "CASE" }}', "MIXED CASE"),
        ('{{ trimPrefix "MIX" .a }}', "ED case"),
        ('{{ TrimSuffix .a "case" }}', "MIXED "),
        ('{{ printf "%s=%5s|%-3s|" "k" .v .v }}', "k=    7|7  |"),
        ('{{ printf "%s" }}', "%!s(MISSING)"),
        ("{{ lower (upper .a) }}", "mixed case"),
        ("x {{- .v -}} y", "x7y"),
        ("{{/* a comment */}}ok", "ok"),
        ("{{`raw {{ text`}}", "raw {{ text"),
        ("plain", "plain"),
        ("{{ __line__ | upper }}", "THE LINE"),
    ],
)
def test_template_functions(template: str, expected: str) -> None:
    t = compile_template(template)
    assert t.render({"a": "MIXED case", "pad": "  p\t", "v": "7"}, "the line") == expected


def test_template_errors_at_compile_time() -> None:
    with pytest.raises(LogQLUnsupportedError, match="template function toJson"):
        compile_template("{{ .a | toJson }}")
    with pytest.raises(LogQLUnsupportedError, match="range"):
        compile_template("{{ range .a }}{{ end }}")
    with pytest.raises(QueryError, match="missing }}"):
        compile_template("{{ .a ")
    with pytest.raises(QueryError, match="non-function"):
        compile_template("{{ .a.b }}")
    with pytest.raises(QueryError, match="wrong number of arguments for upper"):
        compile_template("{{ upper .a .b }}")


def test_template_reports_what_it_reads() -> None:
    t = compile_template("{{ .a }} {{ __line__ }} {{ default .b .c }}")
    assert t.label_names == {"a", "b", "c"} and t.uses_line
    assert pipe('| line_format "static"').needs_labels is False
    assert pipe('| line_format "{{.a}}"').needs_labels is True


def test_label_format_rename_and_template() -> None:
    got = run('| label_format lvl=level, both="{{.lvl}}-{{.level}}-{{__line__}}"', "L",
              {"level": "info", "x": "1"})  # fmt: skip
    # As Loki: templates see the labels after the renames before them.
    assert got == ("L", {"lvl": "info", "x": "1", "both": "info--L"})
    assert out_labels("| label_format a=missing", "L", {"a": "keep"}) == {"a": "keep"}


def test_drop_and_keep() -> None:
    labels = {"a": "1", "b": "v", "c": "w", "d": "4"}
    assert out_labels('| drop a, b="v", c="nope"', "x", labels) == {"c": "w", "d": "4"}
    assert out_labels('| drop c=~"w|x"', "x", labels) == {"a": "1", "b": "v", "d": "4"}
    assert out_labels('| keep a, c="w", d="9"', "x", labels) == {"a": "1", "c": "w"}
    errored = out_labels("| json | keep app", "oops", {"app": "api", "other": "x"})
    assert set(errored) == {"app", "__error__", "__error_details__"}  # keep never drops errors
    assert "__error__" not in out_labels("| json | drop __error__", "oops")
    assert labels == {"a": "1", "b": "v", "c": "w", "d": "4"}


def test_process_never_mutates_input_labels() -> None:
    labels = {"app": "api", "level": "x"}
    p = pipe('| json | label_format l2=level | drop app | line_format "{{.l2}}"')
    got = p.process('{"k":"v"}', labels)
    assert got == ("x", {"k": "v", "l2": "x"})
    assert labels == {"app": "api", "level": "x"}


# ---------------------------------------------------------------- pushdown and helpers


def test_pushdown_line_filters() -> None:
    expr = parse(
        '{a="b"} |= "x" != "y" |~ "re" | json |= "z" | level="e" |= "" '
        '| line_format "{{.m}}" |= "after"'
    ).expr
    assert isinstance(expr, LogQuery)
    assert pushdown_line_filters(expr.pipeline) == (["x", "z"], ["y"])
    assert pushdown_line_filters(()) == ([], [])
    assert pushdown_line_filters([JsonParser(), LineFilter("!=", "q")]) == ([], ["q"])


def test_compile_pipeline_is_cached_and_accepts_lists() -> None:
    stages: list[Stage] = [LineFilter("|=", "x"), JsonParser()]
    assert compile_pipeline(stages) is compile_pipeline(tuple(stages))


@pytest.mark.parametrize(
    ("text", "size"),
    [("20KB", 20_000), ("1.5KiB", 1536), ("100", 100), ("1 MB", 1_000_000), ("2gib", 2 * 1024**3),
     ("1,000B", 1000), ("x", None), ("1XB", None), ("", None), (".", None)],
)  # fmt: skip
def test_parse_bytes(text: str, size: int | None) -> None:
    assert parse_bytes(text) == size
