"""LogQL, core subset: parser, log pipeline, metric engine and Loki's time rules. Pure Python.

parsed = parse('sum by (agent) (count_over_time({app="x"} | json [5m]))')
pipeline = compile_pipeline(log_query.pipeline)
pipeline.process(line, labels)  # -> (line, labels) or None
evaluate_range(parsed.expr, data_fn, start_ns, end_ns, step_ns)
"""

from __future__ import annotations

from .metric import DataFn, SeriesData, bucket_width_ns, evaluate_instant, evaluate_range
from .parser import parse
from .pipeline import (
    Pipeline,
    Template,
    compile_matcher,
    compile_pipeline,
    compile_regex,
    compile_template,
    pushdown_line_filters,
)
from .timefmt import format_duration, now_ns, parse_duration, parse_step, parse_time

__all__ = [
    "DataFn",
    "Pipeline",
    "SeriesData",
    "Template",
    "bucket_width_ns",
    "compile_matcher",
    "compile_pipeline",
    "compile_regex",
    "compile_template",
    "evaluate_instant",
    "evaluate_range",
    "format_duration",
    "now_ns",
    "parse",
    "parse_duration",
    "parse_step",
    "parse_time",
    "pushdown_line_filters",
]
