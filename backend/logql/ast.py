"""The LogQL syntax tree of the core subset (see the Loki reference, section 5).

The parser (`backend.logql.parser.parse`) produces these; the pipeline compiler
(`backend.logql.pipeline`) and the metric engine (`backend.logql.metric`) consume them; the
embedded store pushes `Selector` matchers and simple line filters down into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MatchOp = Literal["=", "!=", "=~", "!~"]
LineFilterOp = Literal["|=", "!=", "|~", "!~"]
CmpOp = Literal["=", "==", "!=", "=~", "!~", ">", ">=", "<", "<="]


@dataclass(frozen=True, slots=True)
class Matcher:
    """A label matcher `name op "value"`. Regexes are fully anchored (as in Loki/RE2)."""

    name: str
    op: MatchOp
    value: str


@dataclass(frozen=True, slots=True)
class Selector:
    matchers: tuple[Matcher, ...]


@dataclass(frozen=True, slots=True)
class LineFilter:
    """`|= "s"`, `!= "s"`, `|~ "re"`, `!~ "re"` (regex unanchored)."""

    op: LineFilterOp
    value: str


@dataclass(frozen=True, slots=True)
class JsonParser:
    """`| json` (all fields) or `| json a="x.y[0]", b` (only those; value is the path)."""

    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LogfmtParser:
    strict: bool = False
    keep_empty: bool = False
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LabelCompare:
    """One comparison in a label filter: string (= != =~ !~), number or duration (== != > ...)."""

    name: str
    op: CmpOp
    value: str
    kind: Literal["string", "number", "duration", "bytes"]


@dataclass(frozen=True, slots=True)
class LabelAnd:
    left: LabelExpr
    right: LabelExpr


@dataclass(frozen=True, slots=True)
class LabelOr:
    left: LabelExpr
    right: LabelExpr


LabelExpr = LabelCompare | LabelAnd | LabelOr


@dataclass(frozen=True, slots=True)
class LabelFilter:
    expr: LabelExpr


@dataclass(frozen=True, slots=True)
class LineFormat:
    template: str


@dataclass(frozen=True, slots=True)
class LabelFormat:
    """`| label_format dst=src, dst2="{{.a}}"`: (dst, src_or_template, is_template)."""

    renames: tuple[tuple[str, str, bool], ...]


@dataclass(frozen=True, slots=True)
class DropLabels:
    """`| drop a, b="v", c=~"re"`: names alone, or matchers."""

    names: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = ()


@dataclass(frozen=True, slots=True)
class KeepLabels:
    names: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = ()


Stage = (
    LineFilter
    | JsonParser
    | LogfmtParser
    | LabelFilter
    | LineFormat
    | LabelFormat
    | DropLabels
    | KeepLabels
)


@dataclass(frozen=True, slots=True)
class LogQuery:
    """A log query: a selector and a pipeline of stages, applied left to right."""

    selector: Selector
    pipeline: tuple[Stage, ...] = ()


RangeOp = Literal["count_over_time", "rate", "bytes_over_time", "bytes_rate", "absent_over_time"]
VectorOp = Literal["sum", "avg", "min", "max", "count", "topk", "bottomk"]


@dataclass(frozen=True, slots=True)
class RangeAggregation:
    """`count_over_time({...} | ... [5m])` and friends; `range_ns` is the `[5m]`."""

    op: RangeOp
    query: LogQuery
    range_ns: int


@dataclass(frozen=True, slots=True)
class Grouping:
    without: bool = False
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VectorAggregation:
    """`sum by (agent) (...)`, `topk(5, ...)`; `param` is k for topk/bottomk."""

    op: VectorOp
    inner: MetricExpr
    grouping: Grouping | None = None
    param: float | None = None


@dataclass(frozen=True, slots=True)
class NumberLiteral:
    value: float


@dataclass(frozen=True, slots=True)
class BinaryOp:
    """Arithmetic `+ - * / % ^` between a metric expression and a scalar, or two metric
    expressions (matched on identical label sets)."""

    op: Literal["+", "-", "*", "/", "%", "^"]
    left: MetricExpr
    right: MetricExpr


MetricExpr = RangeAggregation | VectorAggregation | BinaryOp | NumberLiteral

Expr = LogQuery | MetricExpr


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """What `parse` returns: the tree and the original text."""

    text: str
    expr: Expr
    range_aggregations: tuple[RangeAggregation, ...] = field(default=())

    @property
    def is_log_query(self) -> bool:
        return isinstance(self.expr, LogQuery)
