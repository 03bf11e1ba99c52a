"""The capacity options shared by ``plan capacity``, ``plan autoscale``, ``plan whatif`` and
``plan report``, with their documented defaults (see docs/planner.md).

Defaults describe one GPU replica serving a chat model: it completes 2 requests per second when
busy and works on 4 at once (so one request takes 2 s of service), the SLO is a P95 latency of
5 s, a new replica serves 60 s after it is requested, and it costs $2.50 an hour on demand.
Measure your own with ``margin bench`` and pass them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from margin.errors import InputError
from margin.plan.capacity import Prices, ReplicaModel, SloTarget
from margin.plan.replica_numbers import ReplicaNumbers, from_bench, from_ledger


@dataclass(frozen=True)
class CapacityOptions:
    replica_rps: float | None = None          # None: from tokens, bench or ledger, else 2.0
    replica_tokens_per_s: float | None = None
    replica_bench: str | None = None          # a margin bench JSON result
    replica_ledger: str | None = None         # a ledger URL: measured upstream times
    ledger_model: str | None = None           # which model's rows in that ledger
    concurrency: int | None = None            # None: measured (bench/ledger), else 4
    slo_p95_ms: float = 5000.0
    utilisation_cap: float = 0.85
    startup_s: int = 60
    metric_lag_s: int = 30
    min_replicas: int = 1
    max_replicas: int | None = None
    prices: Prices = field(default_factory=lambda: Prices(on_demand_usd_per_h=2.50,
                                                          reserved_usd_per_h=1.60,
                                                          spot_usd_per_h=0.90,
                                                          spot_max_share=0.3))
    growth_monthly: float = 0.0
    sim_days: float = 7.0

    DEFAULT_REPLICA_RPS = 2.0
    DEFAULT_CONCURRENCY = 4

    def measured(self) -> ReplicaNumbers | None:
        if self.replica_bench and self.replica_ledger:
            raise InputError("pass --replica-bench or --ledger, not both")
        if self.replica_bench:
            return from_bench(self.replica_bench)
        if self.replica_ledger:
            return from_ledger(self.replica_ledger, self.ledger_model)
        return None

    def resolve(self, tokens_per_request: float | None) -> ReplicaChoice:
        """The replica's throughput and concurrency, each with where it came from."""
        m = self.measured()
        conc, conc_src = self.DEFAULT_CONCURRENCY, "default"
        if self.concurrency is not None:
            conc, conc_src = self.concurrency, "--concurrency"
        elif m is not None and m.concurrency is not None:
            conc, conc_src = m.concurrency, m.source
        if self.replica_rps is not None:
            return ReplicaChoice(self.replica_rps, "--replica-rps", conc, conc_src)
        tps, source = self.replica_tokens_per_s, "--replica-tokens-per-s"
        if m is not None:
            if m.replica_rps is not None:
                return ReplicaChoice(m.replica_rps, m.source, conc, conc_src)
            tps, source = m.tokens_per_s, m.source
        if tps is not None:
            if not tokens_per_request:
                raise InputError(f"{source} needs a trace with token counts to turn tokens/s "
                                 "into requests/s; pass --replica-rps instead")
            return ReplicaChoice(tps / tokens_per_request,
                                 f"{source} {tps:g} tokens/s / {tokens_per_request:.0f} tokens "
                                 "per request", conc, conc_src)
        return ReplicaChoice(self.DEFAULT_REPLICA_RPS, "default", conc, conc_src)

    def model(self, tokens_per_request: float | None) -> tuple[ReplicaModel, ReplicaChoice]:
        choice = self.resolve(tokens_per_request)
        if choice.replica_rps <= 0:
            raise InputError("replica throughput must be positive")
        if choice.concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        return ReplicaModel(replica_rps=choice.replica_rps, concurrency=choice.concurrency), \
            choice

    def slo(self) -> SloTarget:
        return SloTarget(latency_s=self.slo_p95_ms / 1000, quantile=0.95,
                         utilisation_cap=self.utilisation_cap)


@dataclass(frozen=True)
class ReplicaChoice:
    replica_rps: float
    replica_rps_source: str
    concurrency: int
    concurrency_source: str

    def defaults(self) -> list[str]:
        """The replica numbers that are documented defaults, not measured or given."""
        return [name for name, src in (("replica_rps", self.replica_rps_source),
                                       ("concurrency", self.concurrency_source))
                if src.startswith("default")]


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'168h', '7d', '15m', '600s', '1w' or plain seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h|d|w)?\s*", text)
    if not m:
        raise InputError(f"expected a duration like 168h, 7d, 15m or 600s, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise InputError(f"expected a positive duration, got {text!r}")
    return value
