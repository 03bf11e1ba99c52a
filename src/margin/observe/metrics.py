"""Prometheus metrics for the gateway, on a registry of its own (one per app).

The cardinality rule: no label value is ever taken from request input. Every label has a
fixed set of values known at start-up — ``model`` a declared model or route name (else
``unknown``), ``user``/``feature`` only those the operator lists (else ``other``), the
endpoint, status, cache outcome and stage from the gateway's own vocabulary — so however
many names clients invent, the number of series (and the memory and time ``/metrics``
costs) stays fixed.

With several workers (``margin serve --workers``) the standard metrics go through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the server
before the workers start): whichever worker is scraped answers for all of them. Collectors
that read live state (the ledger's queue, the batcher's queues) report the scraped worker.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from margin.types import RequestContext

# Seconds; dense where a gateway's own overhead lives, sparse out to slow generations.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 1.0)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _AllWorkers:
    """Every worker's samples of the standard metrics, then this worker's live collectors."""

    def __init__(self, local: CollectorRegistry) -> None:
        from prometheus_client import multiprocess

        self.local = local
        self.shared = CollectorRegistry()
        multiprocess.MultiProcessCollector(self.shared)

    def collect(self):
        seen = set()
        for family in self.shared.collect():
            seen.add(family.name)
            yield family
        for family in self.local.collect():
            if family.name not in seen:
                yield family


class _SettingCollector:
    """The setting each calibrated knob has in this process (shared by replicas when the
    calibration lives in Redis)."""

    def __init__(self, source: Callable[[], dict[str, float]]) -> None:
        self.source = source

    def collect(self):
        g = GaugeMetricFamily("margin_calibrated_setting",
                              "Threshold in force for each calibrated optimisation",
                              labels=["optimization"])
        for name, value in sorted(self.source().items()):
            g.add_metric([name], value)
        yield g


class _LedgerCollector:
    def __init__(self, source: Callable[[], dict[str, float]]) -> None:
        self.source = source

    def collect(self):
        values = self.source()
        c = CounterMetricFamily("margin_ledger_rows", "Ledger rows by outcome",
                                labels=["outcome"])
        for outcome in ("written", "spooled", "replayed"):
            c.add_metric([outcome], values.get(outcome, 0))
        yield c
        g = GaugeMetricFamily("margin_ledger_queue_rows", "Rows waiting for the ledger writer")
        g.add_metric([], values.get("queued", 0))
        yield g
        h = GaugeMetricFamily("margin_ledger_db_up", "1 when the ledger database accepts writes")
        h.add_metric([], values.get("db_up", 0))
        yield h


class _CacheCollector:
    def __init__(self, source: Callable[[], dict[str, tuple[int, int | None]]]) -> None:
        self.source = source

    def collect(self):
        sizes = self.source()
        e = GaugeMetricFamily("margin_cache_entries", "Entries each cache holds in this "
                              "process", labels=["cache"])
        b = GaugeMetricFamily("margin_cache_bytes", "Bytes of cached answers each cache "
                              "holds in this process", labels=["cache"])
        for name, (entries, nbytes) in sizes.items():
            e.add_metric([name], entries)
            if nbytes is not None:
                b.add_metric([name], nbytes)
        yield e
        yield b


UNKNOWN = "unknown"  # a model nobody declared
OTHER = "other"  # a user or feature the operator did not list
NONE = "-"  # no user or feature at all


class GatewayMetrics:
    def __init__(self, models: Iterable[str] = (), users: Iterable[str] = (),
                 features: Iterable[str] = ()) -> None:
        self.models = frozenset(models)
        self.users = frozenset(users)
        self.features = frozenset(features)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("margin_requests", "Requests answered",
                                ["endpoint", "model", "status", "cache"], registry=r)
        self.in_flight = Gauge("margin_requests_in_flight", "Requests being served", registry=r,
                              multiprocess_mode="livesum")
        self.latency = Histogram("margin_request_latency_seconds", "Total request latency",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.upstream = Histogram("margin_upstream_latency_seconds", "Upstream latency",
                                  ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("margin_time_to_first_token_seconds", "Time to first token",
                              ["model"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.overhead = Histogram("margin_overhead_seconds", "Gateway overhead (total - upstream)",
                                  buckets=STAGE_BUCKETS_S, registry=r)
        self.stage = Histogram("margin_stage_seconds", "Each stage's own time", ["stage"],
                               buckets=STAGE_BUCKETS_S, registry=r)
        self.tokens = Counter("margin_tokens", "Tokens metered", ["model", "kind"], registry=r)
        self.cost = Counter("margin_cost_usd", "Cost in USD", ["model", "user", "feature"],
                            registry=r)
        self.saved = Counter("margin_saved_usd", "Cost avoided by caching", ["model"], registry=r)
        self.events = Counter("margin_events", "Notable events (cache backend down, …)",
                              ["event"], registry=r)
        # optimization: exact_cache, semantic_cache, compression, downgrade, route:<name>,
        # cascade:<name> (declared routes only); outcome: agree, disagree, not_judged,
        # failed, capped (the spend cap said no), cap_unavailable (the shared cap's Redis
        # did not answer: refused), busy (too many shadows at once)
        self.shadow_runs = Counter("margin_shadow_runs", "Shadow evaluations",
                                   ["optimization", "outcome"], registry=r)
        self.evaluation_cost = Counter("margin_evaluation_cost_usd",
                                       "Spent on shadow evaluations", ["optimization"],
                                       registry=r)
        # kind: tighten, loosen (online calibration of a threshold from shadow verdicts)
        self.calibration_changes = Counter("margin_calibration_changes",
                                           "Threshold changes made by online calibration",
                                           ["optimization", "kind"], registry=r)

        # labels() costs a lock and a dict build per call; children are cached per label
        # set, which the cardinality rule bounds.
        self._children: dict[tuple, object] = {}
        self._all: _AllWorkers | None = None

    def _child(self, metric, *labels: str):
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def model_label(self, name: str | None) -> str:
        return name if name in self.models else UNKNOWN

    @staticmethod
    def _listed(value: str | None, listed: frozenset[str]) -> str:
        if value is None:
            return NONE
        return value if value in listed else OTHER

    def watch_caches(self, source: Callable[[], dict[str, tuple[int, int | None]]]) -> None:
        self.registry.register(_CacheCollector(source))

    def watch_ledger(self, source: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_LedgerCollector(source))

    def watch_calibration(self, source: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_SettingCollector(source))

    def observe(self, ctx: RequestContext) -> None:
        model = self.model_label(ctx.served_model or ctx.requested_model)
        child = self._child
        # Statuses are the gateway's own or an upstream's 4xx passed on: at most a few
        # hundred values, whatever the client sends.
        status = str(ctx.status) if 100 <= ctx.status <= 599 else "other"
        child(self.requests, ctx.endpoint, model, status, ctx.cache).inc()
        child(self.latency, ctx.endpoint, model).observe(ctx.latency_ms / 1000)
        self.overhead.observe(max(ctx.overhead_ms, 0.0) / 1000)
        if ctx.upstream_ms:
            child(self.upstream, model).observe(ctx.upstream_ms / 1000)
        if ctx.ttft_ms is not None:
            child(self.ttft, model).observe(ctx.ttft_ms / 1000)
        for stage, ms in ctx.stage_ms.items():
            child(self.stage, stage).observe(max(ms, 0.0) / 1000)
        u = ctx.usage
        if u.prompt_tokens:
            child(self.tokens, model, "prompt").inc(u.prompt_tokens)
        if u.completion_tokens:
            child(self.tokens, model, "completion").inc(u.completion_tokens)
        if ctx.cost_usd:
            child(self.cost, model, self._listed(ctx.user, self.users),
                  self._listed(ctx.feature, self.features)).inc(ctx.cost_usd)
        if ctx.saved_usd:
            child(self.saved, model).inc(ctx.saved_usd)

    def observe_shadow(self, optimization: str, outcome: str, cost_usd: float = 0.0) -> None:
        self._child(self.shadow_runs, optimization, outcome).inc()
        if cost_usd:
            self._child(self.evaluation_cost, optimization).inc(cost_usd)

    def render(self) -> bytes:
        """The exposition text; blocking (run it in a worker thread, not on the loop)."""
        if os.environ.get(MULTIPROC_ENV):
            if self._all is None:
                self._all = _AllWorkers(self.registry)
            return generate_latest(self._all)  # type: ignore[arg-type]
        return generate_latest(self.registry)

    def close(self) -> None:
        """A worker that stops takes its live gauges (requests in flight) with it."""
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
