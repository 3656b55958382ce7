"""The LogQL metric engine, over samples the store has already fetched and grouped.

The store hands over, per RangeAggregation node, one `SeriesData` per final label set: the
timestamps of the matching entries (or of pre-aggregated buckets, stamped with their upper edge)
with their counts and byte sizes. Every evaluation point t = start, start+step, ... <= end
aggregates the window (t - range, t] by bisecting the timestamps and differencing prefix sums,
so a series of a million samples over 300 steps costs 600 bisects.

Semantics follow Loki/Prometheus: empty windows give no point; rate = count / range seconds;
absent_over_time gives 1 only where nothing matched, labelled from the selector's equality
matchers; vector aggregations group by / without labels; arithmetic follows IEEE (x/0 = ±Inf,
0/0 = NaN); labels with an empty value are dropped (as in Prometheus, "" means absent); a series
that still carries `__error__` fails the query; more than `max_series` output series fail it too.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from ..errors import QueryError, StorageError
from ..models import MatrixSeries, VectorSample
from .ast import (
    BinaryOp,
    Grouping,
    LogQuery,
    MetricExpr,
    NumberLiteral,
    RangeAggregation,
    VectorAggregation,
)
from .timefmt import NS_PER_SECOND, check_points

__all__ = [
    "DataFn",
    "SeriesData",
    "bucket_width_ns",
    "evaluate_instant",
    "evaluate_range",
]

ERROR_LABEL = "__error__"
DEFAULT_MAX_SERIES = 500


@dataclass(slots=True)
class SeriesData:
    """Samples of one series, as the store fetched them for a range aggregation."""

    labels: dict[str, str]  # final label set after the pipeline (stream + metadata + parsed)
    ts: list[int]  # sorted ascending, ns; one sample per entry OR per pre-aggregated bucket
    counts: list[int]  # entries at that ts (1 per entry, or the bucket's count)
    nbytes: list[int]  # bytes of lines at that ts


# Called with (node, from_ns, to_ns): the store returns the samples with from_ns < ts <= to_ns.
DataFn = Callable[[RangeAggregation, int, int], list[SeriesData]]

_Key = tuple[tuple[str, str], ...]
_Values = list[float | None]  # one slot per evaluation step; None = no point there


@dataclass(slots=True)
class _Series:
    labels: dict[str, str]
    key: _Key
    values: _Values


_Vector = list[_Series]
_Result = float | _Vector  # a scalar is the same at every step


def _key(labels: dict[str, str]) -> _Key:
    return tuple(sorted(labels.items()))


def bucket_width_ns(node: RangeAggregation, start_ns: int, end_ns: int, step_ns: int) -> int:
    """The widest bucket g such that every evaluation window (t - range, t] is a union of whole
    buckets (start + (j-1)g, start + jg]: gcd(step, range), or the range itself when there is a
    single evaluation point (an instant query: start == end, or step <= 0). A store may count
    entries per bucket, stamp each bucket with its upper edge, and get the same answers."""
    if step_ns <= 0 or end_ns <= start_ns:
        return node.range_ns
    return math.gcd(step_ns, node.range_ns)


# ---------------------------------------------------------------- arithmetic


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _mod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)  # Go's math.Mod: the sign of the dividend
    except ValueError:
        return math.nan


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        negative = a < 0 and b.is_integer() and int(b) % 2 == 1
        return -math.inf if negative else math.inf
    except ValueError:
        if a == 0 and b < 0:
            odd = b.is_integer() and int(b) % 2 == 1
            return math.copysign(math.inf, a) if odd else math.inf
        return math.nan


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
    "%": _mod,
    "^": _pow,
}


# ---------------------------------------------------------------- evaluation


class _Evaluator:
    def __init__(self, data: DataFn, steps: list[int]) -> None:
        self.data = data
        self.steps = steps
        self.cache: dict[RangeAggregation, _Vector] = {}

    def eval(self, expr: MetricExpr) -> _Result:
        if isinstance(expr, NumberLiteral):
            return float(expr.value)
        if isinstance(expr, RangeAggregation):
            got = self.cache.get(expr)
            if got is None:
                got = self.cache[expr] = self.range_aggregation(expr)
            return got
        if isinstance(expr, VectorAggregation):
            inner = self.eval(expr.inner)
            if isinstance(inner, float):
                raise QueryError(f"{expr.op}(...) needs a vector inside, not a number")
            return _vector_aggregation(expr, inner, len(self.steps))
        if isinstance(expr, BinaryOp):
            return _binary(expr.op, self.eval(expr.left), self.eval(expr.right))
        if isinstance(expr, LogQuery):
            raise QueryError("a log query cannot be evaluated as a metric")
        raise QueryError(f"unsupported metric expression {type(expr).__name__}")

    def range_aggregation(self, node: RangeAggregation) -> _Vector:
        steps = self.steps
        rng = node.range_ns
        fetched = self.data(node, steps[0] - rng, steps[-1])
        if node.op == "absent_over_time":
            return self.absent(node, fetched)
        per_second = rng / NS_PER_SECOND
        use_bytes = node.op in ("bytes_over_time", "bytes_rate")
        divide = node.op in ("rate", "bytes_rate")
        merged: dict[_Key, _Series] = {}
        for sd in fetched:
            _check_series(sd)
            if not sd.ts:
                continue
            weights = sd.nbytes if use_bytes else sd.counts
            # One entry per sample (the common per-entry case): the count is hi - lo.
            prefix = (
                None if weights.count(1) == len(weights) else list(accumulate(weights, initial=0))
            )
            values: _Values = [None] * len(steps)
            ts = sd.ts
            lo = hi = 0
            any_point = False
            for i, t in enumerate(steps):
                lo = bisect_right(ts, t - rng, lo)
                hi = bisect_right(ts, t, max(hi, lo))
                if hi > lo:
                    total = hi - lo if prefix is None else prefix[hi] - prefix[lo]
                    values[i] = total / per_second if divide else float(total)
                    any_point = True
            if not any_point:
                continue
            labels = {k: v for k, v in sd.labels.items() if v != ""}
            if ERROR_LABEL in labels:
                raise _pipeline_error(labels)
            key = _key(labels)
            existing = merged.get(key)
            if existing is None:
                merged[key] = _Series(labels, key, values)
            else:  # the same label set twice: counts and rates add up
                existing.values = [
                    b if a is None else a if b is None else a + b
                    for a, b in zip(existing.values, values, strict=True)
                ]
        return list(merged.values())

    def absent(self, node: RangeAggregation, fetched: list[SeriesData]) -> _Vector:
        steps = self.steps
        rng = node.range_ns
        present = [False] * len(steps)
        for sd in fetched:
            _check_series(sd)
            ts = sd.ts
            if not ts:
                continue
            for i, t in enumerate(steps):
                if not present[i] and bisect_right(ts, t) > bisect_right(ts, t - rng):
                    present[i] = True
                    labels = {k: v for k, v in sd.labels.items() if v != ""}
                    if ERROR_LABEL in labels:
                        raise _pipeline_error(labels)
        values: _Values = [None if p else 1.0 for p in present]
        if all(p for p in present):
            return []
        labels = _absent_labels(node)
        return [_Series(labels, _key(labels), values)]


def _check_series(sd: SeriesData) -> None:
    if not (len(sd.ts) == len(sd.counts) == len(sd.nbytes)):
        raise StorageError(
            "the store returned malformed series data: ts, counts and nbytes differ in length"
        )


def _pipeline_error(labels: dict[str, str]) -> QueryError:
    err = labels[ERROR_LABEL]
    shown = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return QueryError(
        f"pipeline error: '{err}' for series: '{{{shown}}}'. Use a label filter to drop it: "
        f'add | __error__="" to drop all errors, or | __error__!="{err}" for this one'
    )


def _absent_labels(node: RangeAggregation) -> dict[str, str]:
    """Labels of absent_over_time's series: the selector's equality matchers, except names that
    appear in another matcher too (their value would be ambiguous)."""
    counts: dict[str, int] = {}
    for m in node.query.selector.matchers:
        counts[m.name] = counts.get(m.name, 0) + 1
    return {
        m.name: m.value
        for m in node.query.selector.matchers
        if m.op == "=" and counts[m.name] == 1 and m.value != ""
    }


def _group_labels(labels: dict[str, str], grouping: Grouping | None) -> dict[str, str]:
    if grouping is None:
        return {}
    if grouping.without:
        drop = set(grouping.labels)
        return {
            k: v
            for k, v in labels.items()
            if k not in drop and not (k.startswith("__") and k.endswith("__"))
        }
    return {k: labels[k] for k in grouping.labels if k in labels}


def _vector_aggregation(node: VectorAggregation, inner: _Vector, n: int) -> _Vector:
    groups: dict[_Key, tuple[dict[str, str], list[_Series]]] = {}
    for s in inner:
        glabels = _group_labels(s.labels, node.grouping)
        gkey = _key(glabels)
        entry = groups.get(gkey)
        if entry is None:
            groups[gkey] = (glabels, [s])
        else:
            entry[1].append(s)

    if node.op in ("topk", "bottomk"):
        return _top_bottom(node, groups, n)

    out: _Vector = []
    for gkey, (glabels, members) in groups.items():
        values: _Values = [None] * n
        for i in range(n):
            present = [v for s in members if (v := s.values[i]) is not None]
            if present:
                values[i] = _reduce(node.op, present)
        if any(v is not None for v in values):
            out.append(_Series(glabels, gkey, values))
    return out


def _reduce(op: str, xs: list[float]) -> float:
    if op == "sum":
        return math.fsum(xs) if len(xs) > 1 else xs[0]
    if op == "avg":
        return math.fsum(xs) / len(xs)
    if op == "count":
        return float(len(xs))
    if op in ("min", "max"):
        best = xs[0]
        for x in xs[1:]:
            # Prometheus: a NaN is replaced by any number that follows it.
            if math.isnan(best) or (x < best if op == "min" else x > best):
                best = x
        return best
    raise QueryError(f"unsupported aggregation {op}")


def _top_bottom(
    node: VectorAggregation,
    groups: dict[_Key, tuple[dict[str, str], list[_Series]]],
    n: int,
) -> _Vector:
    k = int(node.param or 0)
    top = node.op == "topk"
    chosen: dict[_Key, _Series] = {}
    for _gkey, (_glabels, members) in groups.items():
        # Ties are broken by label set so that results are stable.
        ordered = sorted(members, key=lambda s: s.key)
        for i in range(n):
            present = [(v, j) for j, s in enumerate(ordered) if (v := s.values[i]) is not None]
            if not present:
                continue
            best = heapq.nsmallest(k, present, key=_rank_top if top else _rank_bottom)
            for v, j in best:
                s = ordered[j]
                out = chosen.get(s.key)
                if out is None:
                    out = chosen[s.key] = _Series(s.labels, s.key, [None] * n)
                out.values[i] = v
    return list(chosen.values())


def _rank_top(c: tuple[float, int]) -> tuple[bool, float, int]:
    v, j = c
    return (math.isnan(v), 0.0 if math.isnan(v) else -v, j)  # NaN ranks last for topk


def _rank_bottom(c: tuple[float, int]) -> tuple[bool, float, int]:
    v, j = c
    return (math.isnan(v), 0.0 if math.isnan(v) else v, j)  # ... and for bottomk


def _binary(op: str, left: _Result, right: _Result) -> _Result:
    fn = _ARITH[op]
    if isinstance(left, float):
        if isinstance(right, float):
            return fn(left, right)
        x = left
        return [
            _Series(s.labels, s.key, [None if v is None else fn(x, v) for v in s.values])
            for s in right
        ]
    if isinstance(right, float):
        y = right
        return [
            _Series(s.labels, s.key, [None if v is None else fn(v, y) for v in s.values])
            for s in left
        ]
    by_key = {s.key: s for s in right}
    out: _Vector = []
    for s in left:
        other = by_key.get(s.key)
        if other is None:
            continue
        values: _Values = [
            None if a is None or b is None else fn(a, b)
            for a, b in zip(s.values, other.values, strict=True)
        ]
        if any(v is not None for v in values):
            out.append(_Series(s.labels, s.key, values))
    return out


def _finish(result: _Vector, max_series: int) -> _Vector:
    series = [s for s in result if any(v is not None for v in s.values)]
    if len(series) > max_series:
        raise QueryError(
            f"maximum of series ({max_series}) reached for a single query; narrow the selector, "
            "add filters, or aggregate with sum by (...)"
        )
    series.sort(key=lambda s: s.key)
    return series


def _steps(start_ns: int, end_ns: int, step_ns: int) -> list[int]:
    if end_ns < start_ns:
        raise QueryError("the end of the query range is before its start")
    check_points(start_ns, end_ns, step_ns)
    return list(range(start_ns, end_ns + 1, step_ns))


def evaluate_range(
    expr: MetricExpr,
    data: DataFn,
    start_ns: int,
    end_ns: int,
    step_ns: int,
    max_series: int = DEFAULT_MAX_SERIES,
) -> list[MatrixSeries]:
    """Evaluate a metric expression at t = start, start+step, ... <= end (a matrix). Each series
    has points only where its window held samples. A bare number gives one series with no labels
    and a point at every step. Output is sorted by label set."""
    steps = _steps(start_ns, end_ns, step_ns)
    result = _Evaluator(data, steps).eval(expr)
    times = [t / NS_PER_SECOND for t in steps]
    if isinstance(result, float):
        return [MatrixSeries(metric={}, values=[(t, result) for t in times])]
    return [
        MatrixSeries(
            metric=dict(s.labels),
            values=[(times[i], v) for i, v in enumerate(s.values) if v is not None],
        )
        for s in _finish(result, max_series)
    ]


def evaluate_instant(
    expr: MetricExpr, data: DataFn, time_ns: int, max_series: int = DEFAULT_MAX_SERIES
) -> list[VectorSample] | float:
    """Evaluate a metric expression at one instant: the window (time - range, time]. Returns a
    vector sorted by label set, or a float when the expression is a bare scalar."""
    result = _Evaluator(data, [time_ns]).eval(expr)
    if isinstance(result, float):
        return result
    ts = time_ns / NS_PER_SECOND
    out: list[VectorSample] = []
    for s in _finish(result, max_series):
        value = s.values[0]
        assert value is not None  # _finish keeps only series with a point
        out.append(VectorSample(metric=dict(s.labels), ts=ts, value=value))
    return out
