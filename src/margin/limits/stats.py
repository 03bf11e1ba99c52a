"""What the limits report to Prometheus: decisions taken without Redis, counters rebuilt
from the ledger, and costs or tokens that settled above what was reserved for them.

A collector the gateway registers on its metrics registry, so the limits need no import of
the gateway's metrics module.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class LimitStats:
    def __init__(self) -> None:
        self.redis_down: Counter[str] = Counter()     # mode -> admissions decided without Redis
        self.rebuilds: Counter[str] = Counter()       # why -> budget counters rebuilt
        self.overrun_usd = 0.0
        self.overrun_requests = 0
        self.tpm_overrun_tokens = 0
        self.tpm_overrun_requests = 0
        self.fallback = False

    def collect(self):
        c = CounterMetricFamily(
            "margin_limits_redis_down", "Requests whose limits and budgets were decided "
            "without Redis, by on_redis_down mode", labels=["mode"])
        for mode in ("share", "refuse", "open"):
            c.add_metric([mode], self.redis_down.get(mode, 0))
        yield c
        r = CounterMetricFamily("margin_budget_rebuilds", "Budget counters rebuilt from the "
                                "ledger and the reservations in flight", labels=["reason"])
        for reason, n in sorted(self.rebuilds.items()):
            r.add_metric([reason], n)
        yield r
        o = CounterMetricFamily("margin_budget_overrun_usd", "Settled cost above the "
                                "reservation made for it (still charged)")
        o.add_metric([], self.overrun_usd)
        yield o
        n = CounterMetricFamily("margin_budget_overrun_requests", "Requests whose settled "
                                "cost was above their reservation")
        n.add_metric([], self.overrun_requests)
        yield n
        t = CounterMetricFamily("margin_tpm_overrun_tokens", "Tokens used above what a "
                                "tokens-per-minute limit was charged up front")
        t.add_metric([], self.tpm_overrun_tokens)
        yield t
        g = GaugeMetricFamily("margin_limits_fallback", "1 while this replica decides limits "
                              "and budgets without Redis")
        g.add_metric([], 1.0 if self.fallback else 0.0)
        yield g
