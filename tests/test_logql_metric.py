"""The metric engine (backend.logql.metric) on hand-made samples."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from backend.errors import QueryError
from backend.logql.ast import MetricExpr, RangeAggregation
from backend.logql.metric import (
    DataFn,
    SeriesData,
    bucket_width_ns,
    evaluate_instant,
    evaluate_range,
)
from backend.logql.parser import parse
from backend.models import MatrixSeries, VectorSample

S = 1_000_000_000
Entries = dict[tuple[tuple[str, str], ...], list[tuple[int, int]]]  # labels -> [(ts ns, bytes)]


def metric(text: str) -> MetricExpr:
    expr = parse(text).expr
    assert not parse(text).is_log_query
    return expr  # type: ignore[return-value]


def series(labels: dict[str, str], seconds: Sequence[float], nbytes: int = 10) -> SeriesData:
    ts = [round(x * S) for x in seconds]
    return SeriesData(labels, ts, [1] * len(ts), [nbytes] * len(ts))


class Store:
    """A DataFn over fixed series that honours (from, to] and records its calls."""

    def __init__(self, *data: SeriesData) -> None:
        self.data = data
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, node: RangeAggregation, lo: int, hi: int) -> list[SeriesData]:
        self.calls.append((node.op, lo, hi))
        out = []
        for sd in self.data:
            keep = [i for i, t in enumerate(sd.ts) if lo < t <= hi]
            out.append(
                SeriesData(
                    dict(sd.labels),
                    [sd.ts[i] for i in keep],
                    [sd.counts[i] for i in keep],
                    [sd.nbytes[i] for i in keep],
                )
            )
        return out


def values(result: list[MatrixSeries]) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    return [(s.metric, s.values) for s in result]


# ---------------------------------------------------------------- windows


def test_window_is_open_at_the_start_and_closed_at_the_end() -> None:
    store = Store(series({"a": "x"}, [10, 20, 20.5, 30]))
    got = evaluate_range(metric('count_over_time({a="x"}[10s])'), store, 10 * S, 40 * S, 10 * S)
    # t=10: (0,10] -> {10}; t=20: (10,20] -> {20}; t=30: (20,30] -> {20.5, 30}; t=40: empty
    assert values(got) == [({"a": "x"}, [(10.0, 1.0), (20.0, 1.0), (30.0, 2.0)])]
    assert store.calls == [("count_over_time", 0, 40 * S)]  # fetched once: (start-range, end]


def test_evaluation_points_stop_at_end() -> None:
    store = Store(series({"a": "x"}, [1, 2, 3, 4, 5, 6, 7]))
    got = evaluate_range(metric('count_over_time({a="x"}[2s])'), store, S, 6 * S + 1, 2 * S)
    assert [t for t, _ in got[0].values] == [1.0, 3.0, 5.0]  # 7 > end


def test_rate_bytes_and_bytes_rate() -> None:
    store = Store(series({"a": "x"}, [i * 10 for i in range(1, 31)], nbytes=100))  # 30 in 5m
    t = 300 * S
    assert evaluate_instant(metric('rate({a="x"}[5m])'), store, t) == [
        VectorSample({"a": "x"}, 300.0, 0.1)
    ]
    assert evaluate_instant(metric('count_over_time({a="x"}[5m])'), store, t) == [
        VectorSample({"a": "x"}, 300.0, 30.0)
    ]
    assert evaluate_instant(metric('bytes_over_time({a="x"}[5m])'), store, t) == [
        VectorSample({"a": "x"}, 300.0, 3000.0)
    ]
    assert evaluate_instant(metric('bytes_rate({a="x"}[5m])'), store, t) == [
        VectorSample({"a": "x"}, 300.0, 10.0)
    ]


def test_empty_windows_give_no_point_and_no_series() -> None:
    store = Store(series({"a": "x"}, [5]), series({"a": "y"}, [100]))
    got = evaluate_range(metric('count_over_time({a=~"x|y"}[10s])'), store, 10 * S, 30 * S, 10 * S)
    assert values(got) == [({"a": "x"}, [(10.0, 1.0)])]
    assert evaluate_instant(metric('count_over_time({a="z"}[1m])'), Store(), 60 * S) == []


def test_output_is_sorted_by_label_set_and_duplicates_merge() -> None:
    store = Store(
        series({"b": "2", "a": "1"}, [1]),
        series({"a": "0"}, [1]),
        series({"a": "1", "b": "2"}, [2]),  # the same label set again: counts add up
        series({"a": "1", "b": "2", "e": ""}, [3]),  # "" is no label at all
    )
    got = evaluate_instant(metric('count_over_time({a=~".+"}[5s])'), store, 5 * S)
    assert got == [
        VectorSample({"a": "0"}, 5.0, 1.0),
        VectorSample({"a": "1", "b": "2"}, 5.0, 3.0),
    ]


# ---------------------------------------------------------------- vector aggregations


def three() -> Store:
    return Store(
        series({"agent": "a", "lvl": "err", "__name__": "n"}, [1, 2, 3]),
        series({"agent": "a", "lvl": "info"}, [1]),
        series({"agent": "b", "lvl": "err"}, [1, 2]),
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sum", [({}, 6.0)]),
        ("sum by (agent)", [({"agent": "a"}, 4.0), ({"agent": "b"}, 2.0)]),
        ("sum without (lvl)", [({"agent": "a"}, 4.0), ({"agent": "b"}, 2.0)]),
        ("avg by (lvl)", [({"lvl": "err"}, 2.5), ({"lvl": "info"}, 1.0)]),
        ("min by (agent)", [({"agent": "a"}, 1.0), ({"agent": "b"}, 2.0)]),
        ("max by (agent)", [({"agent": "a"}, 3.0), ({"agent": "b"}, 2.0)]),
        ("count by (agent)", [({"agent": "a"}, 2.0), ({"agent": "b"}, 1.0)]),
        ("count by (nope)", [({}, 3.0)]),
        ("sum by ()", [({}, 6.0)]),
    ],
)
def test_vector_aggregations(query: str, expected: list[tuple[dict[str, str], float]]) -> None:
    got = evaluate_instant(metric(f'{query} (count_over_time({{a="x"}}[5s]))'), three(), 5 * S)
    assert isinstance(got, list)
    assert [(v.metric, v.value) for v in got] == expected


def test_grouping_after_the_parentheses_is_the_same() -> None:
    a = evaluate_instant(metric('sum(count_over_time({a="x"}[5s])) by (agent)'), three(), 5 * S)
    b = evaluate_instant(metric('sum by (agent) (count_over_time({a="x"}[5s]))'), three(), 5 * S)
    assert a == b and len(a) == 2  # type: ignore[arg-type]


def test_without_drops_internal_labels() -> None:
    got = evaluate_instant(metric('sum without () (count_over_time({a="x"}[5s]))'), three(), 5 * S)
    assert isinstance(got, list)
    assert [v.metric for v in got] == [
        {"agent": "a", "lvl": "err"},
        {"agent": "a", "lvl": "info"},
        {"agent": "b", "lvl": "err"},
    ]


def test_topk_per_step_keeps_original_labels() -> None:
    store = Store(
        series({"s": "a"}, [1, 1, 1, 11]),
        series({"s": "b"}, [2, 2, 12, 12, 12]),
        series({"s": "c"}, [3, 13]),
    )
    got = evaluate_range(
        metric('topk(1, count_over_time({s=~".+"}[10s]))'), store, 10 * S, 20 * S, 10 * S
    )
    assert values(got) == [({"s": "a"}, [(10.0, 3.0)]), ({"s": "b"}, [(20.0, 3.0)])]
    low = evaluate_range(
        metric('bottomk(2, count_over_time({s=~".+"}[10s]))'), store, 10 * S, 20 * S, 10 * S
    )
    assert {s.metric["s"]: s.values for s in low} == {
        "a": [(20.0, 1.0)],
        "b": [(10.0, 2.0)],
        "c": [(10.0, 1.0), (20.0, 1.0)],
    }


def test_topk_by_group_and_ties_broken_by_labels() -> None:
    store = Store(
        series({"g": "1", "s": "b"}, [1, 1]),
        series({"g": "1", "s": "a"}, [1, 1]),
        series({"g": "2", "s": "c"}, [1]),
        series({"g": "2", "s": "d"}, [1, 1, 1]),
    )
    got = evaluate_instant(metric('topk by (g) (1, count_over_time({g=~".+"}[5s]))'), store, 5 * S)
    assert got == [
        VectorSample({"g": "1", "s": "a"}, 5.0, 2.0),
        VectorSample({"g": "2", "s": "d"}, 5.0, 3.0),
    ]
    more = evaluate_instant(metric('topk(10, count_over_time({g=~".+"}[5s]))'), store, 5 * S)
    assert isinstance(more, list) and len(more) == 4


# ---------------------------------------------------------------- absent_over_time


def test_absent_over_time() -> None:
    store = Store(series({"app": "x", "lvl": "e"}, [15]))
    q = 'absent_over_time({app="x", env=~"p.*", job="j", job!="k", lvl="e"}[10s])'
    got = evaluate_range(metric(q), store, 10 * S, 40 * S, 10 * S)
    # labels: equality matchers only, minus names used twice (job)
    assert values(got) == [({"app": "x", "lvl": "e"}, [(10.0, 1.0), (30.0, 1.0), (40.0, 1.0)])]
    assert evaluate_instant(metric('absent_over_time({app="x"}[10s])'), store, 20 * S) == []
    assert evaluate_instant(metric('absent_over_time({app="x"}[10s])'), Store(), 20 * S) == [
        VectorSample({"app": "x"}, 20.0, 1.0)
    ]


# ---------------------------------------------------------------- binary operations


def test_scalar_expressions() -> None:
    assert evaluate_instant(metric("1 + 2 * 3"), Store(), 0) == 7.0
    assert evaluate_instant(metric("2 ^ 3 ^ 2"), Store(), 0) == 512.0
    assert evaluate_instant(metric("7 % 3"), Store(), 0) == 1.0
    assert evaluate_instant(metric("-7 % 3"), Store(), 0) == -1.0  # Go's Mod keeps the sign
    assert evaluate_instant(metric("1 / 0"), Store(), 0) == math.inf
    assert evaluate_instant(metric("-1 / 0"), Store(), 0) == -math.inf
    assert math.isnan(evaluate_instant(metric("0 / 0"), Store(), 0))  # type: ignore[arg-type]
    assert math.isnan(evaluate_instant(metric("5 % 0"), Store(), 0))  # type: ignore[arg-type]
    assert evaluate_instant(metric("0 ^ -1"), Store(), 0) == math.inf
    assert math.isnan(evaluate_instant(metric("-8 ^ 0.5"), Store(), 0))  # type: ignore[arg-type]
    assert evaluate_instant(metric("10 ^ 400"), Store(), 0) == math.inf
    got = evaluate_range(metric("(1 + 1)"), Store(), 0, 2 * S, S)
    assert values(got) == [({}, [(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)])]


def test_vector_scalar_arithmetic() -> None:
    store = Store(series({"a": "x"}, [1, 2]), series({"a": "y"}, [1]))
    q = 'count_over_time({a=~".+"}[5s])'
    got = evaluate_instant(metric(f"{q} * 10"), store, 5 * S)
    assert [(v.metric["a"], v.value) for v in got] == [("x", 20.0), ("y", 10.0)]  # type: ignore[union-attr]
    got = evaluate_instant(metric(f"100 / {q}"), store, 5 * S)
    assert [(v.metric["a"], v.value) for v in got] == [("x", 50.0), ("y", 100.0)]  # type: ignore[union-attr]
    got = evaluate_instant(metric(f"{q} - 1 / 0"), store, 5 * S)
    assert all(v.value == -math.inf for v in got)  # type: ignore[union-attr]


def test_vector_vector_matches_identical_label_sets() -> None:
    errors = series({"agent": "a", "k": "1"}, [1, 2, 3])
    total_a = series({"agent": "a"}, [0.5, 1, 2, 3, 4, 5])
    total_b = series({"agent": "b"}, [1])
    data: DataFn = lambda node, lo, hi: (  # noqa: E731
        [errors] if node.query.pipeline else [total_a, total_b]
    )
    q = (
        'sum by (agent) (count_over_time({a="x"} |= "error" [5s])) '
        '/ sum by (agent) (count_over_time({a="x"}[5s]))'
    )
    assert evaluate_instant(metric(q), data, 5 * S) == [VectorSample({"agent": "a"}, 5.0, 0.5)]
    unmatched = 'count_over_time({a="x"} |= "error" [5s]) / count_over_time({a="x"}[5s])'
    assert evaluate_instant(metric(unmatched), data, 5 * S) == []


def test_each_distinct_range_aggregation_is_fetched_once() -> None:
    store = Store(series({"a": "x"}, [1]))
    q = 'rate({a="x"}[5s]) + rate({a="x"}[5s]) + count_over_time({a="x"}[10s])'
    evaluate_range(metric(q), store, 10 * S, 20 * S, 5 * S)
    assert sorted(store.calls) == [("count_over_time", 0, 20 * S), ("rate", 5 * S, 20 * S)]


# ---------------------------------------------------------------- errors and limits


def test_series_with_error_label_fail_the_query() -> None:
    store = Store(series({"a": "x", "__error__": "JSONParserErr"}, [1]))
    with pytest.raises(QueryError, match="pipeline error: 'JSONParserErr'") as exc:
        evaluate_instant(metric('count_over_time({a="x"} | json [5s])'), store, 5 * S)
    assert '| __error__=""' in str(exc.value)
    # an empty __error__ is no error, and an errored series with no point in range is harmless
    ok = Store(series({"a": "x", "__error__": ""}, [1]), series({"a": "y", "__error__": "E"}, [9]))
    assert evaluate_instant(metric('count_over_time({a=~".+"}[5s])'), ok, 5 * S) == [
        VectorSample({"a": "x"}, 5.0, 1.0)
    ]


def test_max_series() -> None:
    store = Store(*(series({"i": str(i)}, [1]) for i in range(6)))
    q = metric('count_over_time({i=~".+"}[5s])')
    assert len(evaluate_instant(q, store, 5 * S, max_series=6)) == 6  # type: ignore[arg-type]
    with pytest.raises(QueryError, match=r"maximum of series \(5\) reached for a single query"):
        evaluate_instant(q, store, 5 * S, max_series=5)
    with pytest.raises(QueryError, match="maximum of series"):
        evaluate_range(q, store, 5 * S, 10 * S, S, max_series=5)
    # the limit is on the output: aggregating many series is fine
    assert len(evaluate_instant(metric(f"sum({q_text()})"), store, 5 * S, max_series=1)) == 1  # type: ignore[arg-type]


def q_text() -> str:
    return 'count_over_time({i=~".+"}[5s])'


@pytest.mark.parametrize(
    ("start", "end", "step", "message"),
    [
        (10, 5, 1, "before its start"),
        (0, 10, 0, "zero or negative"),
        (0, 10, -1, "zero or negative"),
        (0, 20_000, 1, "11,000 points"),
    ],
)
def test_bad_ranges(start: int, end: int, step: int, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        evaluate_range(metric('rate({a="x"}[1s])'), Store(), start * S, end * S, step * S)


def test_malformed_store_data_is_reported() -> None:
    bad = SeriesData({"a": "x"}, [1, 2], [1], [1, 1])
    with pytest.raises(Exception, match="malformed series data"):
        evaluate_instant(metric('rate({a="x"}[1s])'), lambda n, lo, hi: [bad], 5 * S)


# ---------------------------------------------------------------- pre-aggregated buckets


def test_bucket_width() -> None:
    node = metric('rate({a="x"}[5m])')
    assert isinstance(node, RangeAggregation)
    assert bucket_width_ns(node, 0, 3600 * S, 60 * S) == 60 * S
    assert bucket_width_ns(node, 0, 3600 * S, 14 * S) == 2 * S
    assert bucket_width_ns(node, 0, 3600 * S, 600 * S) == 300 * S
    assert bucket_width_ns(node, 5 * S, 5 * S, 0) == 300 * S  # instant: one window
    assert bucket_width_ns(node, 0, 3600 * S, 7 * S + 1) == 1


def bucketed(entries: Entries, start: int, g: int) -> list[SeriesData]:
    """Pre-aggregate like a store would: bucket (start+(j-1)g, start+jg] stamped start+jg."""
    out = []
    for key, items in entries.items():
        buckets: dict[int, list[int]] = {}
        for ts, nb in items:
            stamp = start - ((start - ts) // g) * g  # start + ceil((ts - start) / g) * g
            acc = buckets.setdefault(stamp, [0, 0])
            acc[0] += 1
            acc[1] += nb
        stamps = sorted(buckets)
        out.append(
            SeriesData(
                dict(key),
                stamps,
                [buckets[s][0] for s in stamps],
                [buckets[s][1] for s in stamps],
            )
        )
    return out


def per_entry(entries: Entries) -> list[SeriesData]:
    out = []
    for key, items in entries.items():
        items = sorted(items)
        out.append(
            SeriesData(dict(key), [t for t, _ in items], [1] * len(items), [b for _, b in items])
        )
    return out


@pytest.mark.parametrize(
    "query",
    [
        'count_over_time({a="x"}[50s])',
        'rate({a="x"}[50s])',
        'bytes_over_time({a="x"}[50s])',
        'bytes_rate({a="x"}[50s])',
        'sum by (lvl) (count_over_time({a="x"}[50s]))',
        'topk(2, rate({a="x"}[50s])) * 2',
        'absent_over_time({a="x"}[50s])',
    ],
)
@pytest.mark.parametrize("step", [20, 30, 7, 50, 100])
def test_bucketed_input_gives_the_same_answer(query: str, step: int) -> None:
    rnd = random.Random(f"{query}-{step}")
    start, end = 1000 * S + 123, 1600 * S + 123
    entries: Entries = {}
    for lvl in ("err", "info", "warn"):
        key = (("a", "x"), ("lvl", lvl))
        many = 4 if "absent" in query else 400  # absent needs empty windows
        entries[key] = [
            (rnd.randrange(start - 60 * S, end + 10 * S), rnd.randrange(1, 200))
            for _ in range(rnd.randrange(0, many))
        ]
        entries[key] += [(start + k * 10 * S, 5) for k in range(3)]  # samples on window edges
    expr = metric(query)
    nodes = parse(query).range_aggregations
    g = bucket_width_ns(nodes[0], start, end, step * S)

    def fetch(data: list[SeriesData]) -> DataFn:
        return lambda node, lo, hi: Store(*data)(node, lo, hi)

    want = evaluate_range(expr, fetch(per_entry(entries)), start, end, step * S)
    got = evaluate_range(expr, fetch(bucketed(entries, start, g)), start, end, step * S)
    assert got == want
    assert want  # the comparison is not vacuous
    inst_g = bucket_width_ns(nodes[0], end, end, 0)
    assert evaluate_instant(expr, fetch(bucketed(entries, end, inst_g)), end) == (
        evaluate_instant(expr, fetch(per_entry(entries)), end)
    )
