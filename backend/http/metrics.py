"""Prometheus metrics of the HTTP port, in a registry of its own (one per app).

Names follow Prometheus conventions: an `agentlog_` prefix, base units in the name (`_seconds`,
`_bytes`, `_usd`), `_total` on counters, and labels with a bounded set of values: a route
*template* (never a path with a run id in it), a status code, a cache level, a model (capped at
`MAX_MODELS` distinct values, the rest count as `other`), a tenant. Never a run id.

What is measured where:

- process: `process_*` and `python_*` (prometheus_client's own collectors);
- requests: `agentlog_http_request_duration_seconds{method,route,status}` (histogram) and
  `agentlog_http_requests_in_flight`, by the request middleware (`security.py`);
- auth and limits: `agentlog_http_auth_failures_total{reason}`,
  `agentlog_http_rate_limited_total{category}`, `agentlog_rate_limit_storage_errors_total`;
- log source queries made by the port: `agentlog_source_query_duration_seconds{source,op}` and
  `agentlog_source_query_errors_total{source,op,reason}` (`source_timer`);
- live tails: `agentlog_tail_subscribers{api}`, `agentlog_tail_lines_total{api}` (sent),
  `agentlog_tail_dropped_lines_total{api}` (a slow reader missed them);
- ingest: `agentlog_ingest_entries_total{api,outcome}`, `agentlog_ingest_request_bytes_total{api}`;
- summaries (OpenRouter or extractive): `agentlog_summary_requests_total{model,outcome}`,
  `agentlog_summary_tokens_total{model,type}`, `agentlog_summary_cost_usd_total{model}`, from
  every `Summary` the facade makes, whoever asked (the summary endpoint, the TUI beside the port,
  the CLI: `follow_backend`), and those the summary endpoint returns (`record_summary`); each
  summary counted once per process with outcome `ok` or `fallback` (the AI failed), however many
  requests share or replay it. A stored summary the endpoint replays counts once per request as
  outcome `cached`, without tokens or cost (replays elsewhere are not counted);
- collected on scrape (`Scrape.collect`, called by the `/metrics` endpoint): cache hits, misses,
  sets, evictions, expirations and entries by level (`Backend.cache_stats`); each source's state
  and probe latency (`Backend.health`); the failure-pattern miner's
  `agentlog_pattern_miner_lines_total{path}` and `agentlog_pattern_miner_seconds_total{path}`
  (`Backend.miner_stats`; `path` "ingest": lines classified as the embedded store stores them;
  "read": lines, or the embedded store's index rows, classified and mined for failure-pattern
  reports, including those `/metrics` itself makes. Lines/s is
  `rate(agentlog_pattern_miner_lines_total[5m])`, the share of a core spent mining
  `rate(agentlog_pattern_miner_seconds_total[5m])`); runs by status and
  triage state per tenant (`Backend.task_counts`); failure patterns of the last hour per tenant,
  and how many are new (`Backend.failure_patterns`, recomputed at most once a minute per tenant).

`agentlog_tenant`-labelled families (runs, patterns) only show the caller's own tenant unless the
caller is an admin, who sees every tenant the process knows of.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .. import __version__
from ..errors import AgentlogError, ServiceUnavailable, UsageError
from ..facade import Backend
from ..models import (
    CacheStats,
    HealthState,
    MinerStats,
    PatternKind,
    RunStatus,
    SourceHealth,
    Summary,
    TaskFilter,
    TriageState,
)

__all__ = ["CONTENT_TYPE", "HttpMetrics", "Scrape"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MAX_MODELS = 50
PATTERN_WINDOW_NS = 3600 * 1_000_000_000
PATTERN_REFRESH_S = 60.0
PATTERN_WAIT_S = 3.0  # a scrape waits this long for a pattern report, then serves the last one
REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUERY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

# `_created` samples double every counter's series for little use; off for the whole process.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _ScrapeCollector(Collector):
    """Families filled from a snapshot taken by the (async) scrape just before exposition."""

    def __init__(self) -> None:
        self.cache: list[CacheStats] = []
        self.health: list[SourceHealth] = []
        self.miner: list[MinerStats] = []
        self.rate_limit_errors = 0

    def describe(self) -> list[Metric]:
        return []  # so registering never calls collect()

    def collect(self) -> Iterator[Metric]:
        level = ["level"]
        fams = {
            "hits": CounterMetricFamily(
                "agentlog_cache_hits", "Cache lookups that found a value.", labels=level
            ),
            "misses": CounterMetricFamily(
                "agentlog_cache_misses", "Cache lookups that found nothing.", labels=level
            ),
            "sets": CounterMetricFamily("agentlog_cache_sets", "Values stored.", labels=level),
            "evictions": CounterMetricFamily(
                "agentlog_cache_evictions", "Values evicted to make room.", labels=level
            ),
            "expirations": CounterMetricFamily(
                "agentlog_cache_expirations", "Values dropped at expiry.", labels=level
            ),
        }
        size = GaugeMetricFamily("agentlog_cache_entries", "Entries held.", labels=level)
        cap = GaugeMetricFamily(
            "agentlog_cache_max_entries", "Most entries held (0: unbounded).", labels=level
        )
        for st in self.cache:
            for attr, fam in fams.items():
                fam.add_metric([st.level], float(getattr(st, attr)))
            size.add_metric([st.level], float(st.size))
            cap.add_metric([st.level], float(st.max_size))
        yield from fams.values()
        yield size
        yield cap
        up = GaugeMetricFamily(
            "agentlog_source_up",
            "1 when the source is ok, 0.5 degraded, 0 down.",
            labels=["source", "kind"],
        )
        lat = GaugeMetricFamily(
            "agentlog_source_probe_latency_seconds",
            "Latency of the last health probe of each source.",
            labels=["source", "kind"],
        )
        for h in self.health:
            value = {HealthState.OK: 1.0, HealthState.DEGRADED: 0.5}.get(h.state, 0.0)
            up.add_metric([h.name, h.kind], value)
            if h.latency_ms is not None:
                lat.add_metric([h.name, h.kind], h.latency_ms / 1000)
        yield up
        yield lat
        mined = CounterMetricFamily(
            "agentlog_pattern_miner_lines",
            "Lines the failure-pattern miner classified or mined, by path (ingest, read).",
            labels=["path"],
        )
        busy = CounterMetricFamily(
            "agentlog_pattern_miner_seconds",
            "Seconds the failure-pattern miner spent, by path (ingest, read).",
            labels=["path"],
        )
        for m in self.miner:
            mined.add_metric([m.path], float(m.lines))
            busy.add_metric([m.path], m.seconds)
        yield mined
        yield busy
        yield CounterMetricFamily(
            "agentlog_rate_limit_storage_errors",
            "Rate-limit storage failures (the requests were let through).",
            value=float(self.rate_limit_errors),
        )


@dataclass(slots=True)
class _TenantFigures:
    runs: dict[tuple[str, str], int] = field(default_factory=dict)  # (status, triage) -> n
    patterns: dict[tuple[str, bool], int] = field(default_factory=dict)  # (kind, new) -> n
    patterns_known: bool = False


class _TenantCollector(Collector):
    def __init__(self, figures: dict[str, _TenantFigures]) -> None:
        self.figures = figures

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "agentlog_runs",
            "Runs in the task table by status (stalled derived) and triage state.",
            labels=["tenant", "status", "triage"],
        )
        pats = GaugeMetricFamily(
            "agentlog_failure_patterns",
            "Failure patterns (error templates and agent signals) of the last hour.",
            labels=["tenant", "kind"],
        )
        new = GaugeMetricFamily(
            "agentlog_failure_patterns_new",
            "Failure patterns of the last hour absent from the hour before.",
            labels=["tenant", "kind"],
        )
        for tenant, fig in sorted(self.figures.items()):
            for (status, triage), n in sorted(fig.runs.items()):
                runs.add_metric([tenant, status, triage], float(n))
            if fig.patterns_known:
                for kind in PatternKind:
                    total = fig.patterns.get((kind.value, False), 0)
                    fresh = fig.patterns.get((kind.value, True), 0)
                    pats.add_metric([tenant, kind.value], float(total + fresh))
                    new.add_metric([tenant, kind.value], float(fresh))
        yield runs
        yield pats
        yield new


class HttpMetrics:
    """The instruments of one app (see module doc)."""

    def __init__(self, source: str = "embedded") -> None:
        self.source = source
        r = self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge(
            "agentlog_build_info", "agentlog version (always 1).", ["version"], registry=r
        ).labels(__version__).set(1)
        self.requests = Histogram(
            "agentlog_http_request_duration_seconds",
            "HTTP request duration by route template, method and status code.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "agentlog_http_requests_in_flight", "HTTP requests being served.", registry=r
        )
        self.auth_failures = Counter(
            "agentlog_http_auth_failures_total",
            "Requests refused by authentication or authorization, by reason.",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "agentlog_http_rate_limited_total",
            "Requests answered 429, by limit category.",
            ["category"],
            registry=r,
        )
        self.source_query = Histogram(
            "agentlog_source_query_duration_seconds",
            "Log source queries made by the HTTP port, by operation.",
            ["source", "op"],
            buckets=QUERY_BUCKETS,
            registry=r,
        )
        self.source_errors = Counter(
            "agentlog_source_query_errors_total",
            "Log source queries that failed, by operation and reason.",
            ["source", "op", "reason"],
            registry=r,
        )
        self.tail_subscribers = Gauge(
            "agentlog_tail_subscribers", "Open live-tail connections.", ["api"], registry=r
        )
        self.tail_lines = Counter(
            "agentlog_tail_lines_total", "Log lines sent to live tails.", ["api"], registry=r
        )
        self.tail_dropped = Counter(
            "agentlog_tail_dropped_lines_total",
            "Log lines live tails missed because the reader fell behind (reported to it).",
            ["api"],
            registry=r,
        )
        self.ingest_entries = Counter(
            "agentlog_ingest_entries_total",
            "Log entries received by the push endpoints, by outcome.",
            ["api", "outcome"],
            registry=r,
        )
        self.ingest_bytes = Counter(
            "agentlog_ingest_request_bytes_total",
            "Push request bodies received, as sent (compressed).",
            ["api"],
            registry=r,
        )
        self.summary_requests = Counter(
            "agentlog_summary_requests_total",
            "Summaries made, by model and outcome (ok, fallback: the AI failed).",
            ["model", "outcome"],
            registry=r,
        )
        self.summary_tokens = Counter(
            "agentlog_summary_tokens_total",
            "Tokens billed for summaries, by model and type (input, output).",
            ["model", "type"],
            registry=r,
        )
        self.summary_cost = Counter(
            "agentlog_summary_cost_usd_total",
            "Cost of summaries in US dollars, as the provider reported it.",
            ["model"],
            registry=r,
        )
        for api in ("api", "loki"):  # known label values start at 0, not absent
            self.tail_subscribers.labels(api)
            self.tail_lines.labels(api)
            self.tail_dropped.labels(api)
        for api in ("loki", "otlp"):
            self.ingest_bytes.labels(api)
            for outcome in ("accepted", "rejected"):
                self.ingest_entries.labels(api, outcome)
        self.scrape = _ScrapeCollector()
        r.register(self.scrape)
        self._models: set[str] = set()
        self._seen_summaries: OrderedDict[tuple[str, str, str, int], None] = OrderedDict()
        self._patterns: dict[str, tuple[float, _TenantFigures]] = {}
        self._pattern_tasks: dict[str, asyncio.Task[None]] = {}
        self._unfollow: Callable[[], None] | None = None

    def follow_backend(self, backend: Backend) -> None:
        """Count every summary `backend` makes, not only those the summary endpoint serves (the
        TUI may run beside the port in the same process). `close` stops it; following again
        replaces the previous registration."""
        self.unfollow_backend()
        self._unfollow = backend.add_summary_listener(self._on_summary)

    def unfollow_backend(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None

    def _on_summary(self, summary: Summary, *, replayed: bool) -> None:
        # A replay cost nothing now (it may have been made by another process, or before a
        # restart); the endpoint counts its own replays as `cached`.
        if not replayed:
            self.record_summary(summary)

    # ------------------------------------------------------------ hooks

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        m = method if method in _METHODS else "OTHER"
        self.requests.labels(m, route, str(status)).observe(seconds)

    @contextlib.contextmanager
    def source_timer(self, op: str) -> Iterator[None]:
        """Time one log-source call; failures are counted by kind (user, unavailable, error)."""
        t0 = time.perf_counter()
        try:
            yield
        except UsageError:
            self.source_errors.labels(self.source, op, "bad_query").inc()
            raise
        except ServiceUnavailable:
            self.source_errors.labels(self.source, op, "unavailable").inc()
            raise
        except AgentlogError:
            self.source_errors.labels(self.source, op, "error").inc()
            raise
        finally:
            self.source_query.labels(self.source, op).observe(time.perf_counter() - t0)

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(model)
        return model

    def record_summary(self, summary: Summary) -> bool:
        """Count a summary's request, tokens and cost once (a replay of a stored summary, or
        another reader of the same one, is not counted again). Returns whether it counted."""
        key = (summary.run_id, summary.input_hash, summary.model, summary.created_at)
        if key in self._seen_summaries:
            return False
        self._seen_summaries[key] = None
        if len(self._seen_summaries) > 10_000:
            self._seen_summaries.popitem(last=False)
        model = self.model_label(summary.model or "unknown")
        self.summary_requests.labels(model, "fallback" if summary.error else "ok").inc()
        self.summary_tokens.labels(model, "input").inc(max(0, summary.input_tokens))
        self.summary_tokens.labels(model, "output").inc(max(0, summary.output_tokens))
        if summary.cost_usd > 0 and math.isfinite(summary.cost_usd):
            self.summary_cost.labels(model).inc(summary.cost_usd)
        return True

    # ------------------------------------------------------------ scrape

    async def _pattern_figures(self, backend: Backend, tenant: str) -> _TenantFigures | None:
        """The last hour's patterns of `tenant`, recomputed at most once a minute, in the
        background: a slow mining run never holds a scrape longer than PATTERN_WAIT_S."""
        now = time.monotonic()
        last = self._patterns.get(tenant)
        if last is not None and now - last[0] < PATTERN_REFRESH_S:
            return last[1]
        task = self._pattern_tasks.get(tenant)
        if task is None:

            async def refresh() -> None:
                minute = 60_000_000_000  # the window ends on the next whole minute, so a
                end = (time.time_ns() // minute + 1) * minute  # minute of scrapes shares a key
                report = await backend.failure_patterns(end - PATTERN_WINDOW_NS, end, tenant=tenant)
                fig = _TenantFigures(patterns_known=True)
                for p in report.patterns:
                    k = (p.kind.value, p.new)
                    fig.patterns[k] = fig.patterns.get(k, 0) + 1
                self._patterns[tenant] = (time.monotonic(), fig)

            task = asyncio.create_task(refresh(), name=f"metrics-patterns-{tenant}")
            self._pattern_tasks[tenant] = task
            task.add_done_callback(lambda _t: self._pattern_tasks.pop(tenant, None))
        with contextlib.suppress(TimeoutError, AgentlogError):
            await asyncio.wait_for(asyncio.shield(task), PATTERN_WAIT_S)
        got = self._patterns.get(tenant)
        return None if got is None else got[1]

    async def _tenant_figures(self, backend: Backend, tenant: str) -> _TenantFigures:
        fig = _TenantFigures()
        for triage in TriageState:
            counts = await backend.task_counts(TaskFilter(triage=(triage,), tenant=tenant))
            for status in RunStatus:
                fig.runs[(status.value, triage.value)] = counts.get(status.value, 0)
        pats = await self._pattern_figures(backend, tenant)
        if pats is not None:
            fig.patterns, fig.patterns_known = pats.patterns, True
        return fig

    async def collect(
        self, backend: Backend, tenants: Sequence[str], *, rate_limit_errors: int = 0
    ) -> Scrape:
        """Take the scrape-time snapshot and return what to expose."""
        figures = {t: await self._tenant_figures(backend, t) for t in tenants}
        self.scrape.cache = await backend.cache_stats()
        self.scrape.health = await backend.health()
        self.scrape.miner = await backend.miner_stats()
        self.scrape.rate_limit_errors = rate_limit_errors
        extra = CollectorRegistry(auto_describe=False)
        extra.register(_TenantCollector(figures))
        return Scrape((self.registry, extra))

    async def close(self) -> None:
        self.unfollow_backend()
        tasks = list(self._pattern_tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(slots=True)
class Scrape:
    registries: tuple[CollectorRegistry, ...]

    def text(self) -> bytes:
        """The Prometheus text exposition format (version 0.0.4)."""
        return b"".join(generate_latest(r) for r in self.registries)

    def families(self) -> Iterable[Metric]:
        for r in self.registries:
            yield from r.collect()

    def json(self) -> dict[str, Any]:
        """The same figures as JSON: `{"metrics": [{name, type, help, samples: [...]}]}`.
        Non-finite values are written as strings ("+Inf", "-Inf", "NaN")."""
        out = []
        for fam in self.families():
            samples = [
                {"name": s.name, "labels": dict(s.labels), "value": _json_number(s.value)}
                for s in fam.samples
            ]
            out.append(
                {"name": fam.name, "type": fam.type, "help": fam.documentation, "samples": samples}
            )
        return {"metrics": out}


def _json_number(v: float) -> float | str:
    if math.isfinite(v):
        return v
    if math.isnan(v):
        return "NaN"
    return "+Inf" if v > 0 else "-Inf"
