"""Replicas for a latency SLO: Erlang C with a burstiness correction, the rule of thumb, the cheapest mix.

A replica is modelled as ``concurrency`` servers, each finishing a request in
``service_s = concurrency / replica_rps`` seconds, so that a fully busy replica does
``replica_rps`` requests per second. R replicas are an M/M/c queue with c = R x concurrency.

Real traffic is not Poisson: the Allen–Cunneen approximation scales the M/M/c waiting time by
(ca² + cs²) / 2, where ca is the inter-arrival coefficient of variation measured on the trace and
cs the service-time one. We apply the same factor to the tail: P(W > t) ≈ C · exp(−(cμ − λ) t ·
2 / (ca² + cs²)), exact for M/M/c (ca = cs = 1) and the heavy-traffic (Kingman) shape otherwise.
A request meets the SLO when its wait is under ``slo_s − service_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReplicaModel:
    replica_rps: float          # requests per second one fully busy replica completes
    concurrency: int = 2        # requests one replica serves at the same time

    @property
    def service_s(self) -> float:
        return self.concurrency / self.replica_rps


@dataclass(frozen=True)
class SloTarget:
    latency_s: float = 0.5      # the latency bound ...
    quantile: float = 0.95      # ... that this share of requests must meet
    utilisation_cap: float = 0.85  # never plan a replica busier than this on average


# --------------------------------------------------------------------------------- Erlang C

def erlang_b(servers: int, load_erl: float) -> float:
    """Blocking probability of M/M/c/c, by the stable recursion B(k) = aB(k−1) / (k + aB(k−1))."""
    b = 1.0
    for k in range(1, servers + 1):
        b = load_erl * b / (k + load_erl * b)
    return b


def erlang_c(servers: int, load_erl: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a = λ/μ (Erlangs)."""
    if load_erl <= 0:
        return 0.0
    if load_erl >= servers:
        return 1.0
    b = erlang_b(servers, load_erl)
    rho = load_erl / servers
    return b / (1 - rho * (1 - b))


def mean_wait_s(servers: int, arrival_rps: float, service_s: float,
                ca2: float = 1.0, cs2: float = 1.0) -> float:
    """Mean queueing delay, M/M/c times the Allen–Cunneen factor (ca² + cs²)/2."""
    a = arrival_rps * service_s
    if a >= servers:
        return math.inf
    c = erlang_c(servers, a)
    return c * service_s / (servers - a) * (ca2 + cs2) / 2


def wait_exceed_prob(servers: int, arrival_rps: float, service_s: float, wait_s: float,
                     ca2: float = 1.0, cs2: float = 1.0) -> float:
    """P(W > wait_s) with the burstiness-corrected exponential tail."""
    a = arrival_rps * service_s
    if a >= servers:
        return 1.0
    if wait_s < 0:
        return 1.0
    c = erlang_c(servers, a)
    decay = (servers - a) / service_s * 2 / max(ca2 + cs2, 1e-9)
    return c * math.exp(-decay * wait_s)


def latency_exceed_prob(replicas: int, arrival_rps: float, model: ReplicaModel, slo: SloTarget,
                        ca2: float = 1.0, cs2: float = 1.0) -> float:
    if replicas <= 0:
        return 1.0 if arrival_rps > 0 else 0.0
    return wait_exceed_prob(replicas * model.concurrency, arrival_rps, model.service_s,
                            slo.latency_s - model.service_s, ca2, cs2)


def replicas_for_slo(arrival_rps: float, model: ReplicaModel, slo: SloTarget,
                     ca2: float = 1.0, cs2: float = 1.0, max_replicas: int = 100_000) -> int:
    """The fewest replicas that keep utilisation under the cap and the SLO quantile met."""
    if arrival_rps <= 0:
        return 0
    if slo.latency_s <= model.service_s:
        raise ValueError(f"the SLO ({slo.latency_s * 1000:g} ms) is not above the service time "
                         f"({model.service_s * 1000:g} ms): no number of replicas meets it")
    r = max(1, math.ceil(arrival_rps / (model.replica_rps * slo.utilisation_cap) - 1e-9))
    while r < max_replicas:
        if latency_exceed_prob(r, arrival_rps, model, slo, ca2, cs2) <= 1 - slo.quantile:
            return r
        r += 1
    return max_replicas


def replicas_series(rates_rps: np.ndarray, model: ReplicaModel, slo: SloTarget,
                    ca2: float = 1.0, cs2: float = 1.0) -> np.ndarray:
    """Replicas per period; NaN periods (gaps) stay NaN. Cached per distinct rounded rate."""
    out = np.full(len(rates_rps), np.nan)
    cache: dict[float, int] = {}
    for i, lam in enumerate(rates_rps):
        if np.isnan(lam):
            continue
        key = round(float(lam), 4)
        if key not in cache:
            cache[key] = replicas_for_slo(key, model, slo, ca2, cs2)
        out[i] = cache[key]
    return out


# --------------------------------------------------------------------------------- rule of thumb

RULE_OF_THUMB = "min = max(2, ⌈avg/capacity × 1.2⌉), max = ⌈P99/capacity × 1.2⌉"


def rule_of_thumb(avg_rps: float, p99_rps: float, replica_rps: float) -> tuple[int, int]:
    """The usual sizing rule of thumb: min = max(2, ⌈avg/capacity × 1.2⌉), max = ⌈P99/capacity × 1.2⌉."""
    lo = max(2, math.ceil(avg_rps / replica_rps * 1.2 - 1e-9))
    hi = math.ceil(p99_rps / replica_rps * 1.2 - 1e-9)
    return lo, max(lo, hi)


# --------------------------------------------------------------------------------- price mix

@dataclass(frozen=True)
class Prices:
    on_demand_usd_per_h: float = 1.00   # one replica-hour on demand
    reserved_usd_per_h: float = 0.60    # effective hourly price of a committed replica
    spot_usd_per_h: float = 0.35        # interruptible replica-hour
    spot_max_share: float = 0.3         # at most this share of the running replicas on spot


@dataclass(frozen=True)
class Mix:
    reserved: int
    on_demand_replica_h: float
    spot_replica_h: float
    reserved_replica_h: float
    cost_usd: float
    all_on_demand_usd: float
    hours: float

    @property
    def saving_share(self) -> float:
        return 1 - self.cost_usd / self.all_on_demand_usd if self.all_on_demand_usd else 0.0

    def to_json(self) -> dict:
        return {**self.__dict__, "saving_share": self.saving_share}


def cheapest_mix(replicas: np.ndarray, step_h: float, prices: Prices) -> Mix:
    """Reserved base B (paid every hour), then spot up to a share of what runs, on demand on top.

    Tries every B from 0 to the peak: the cost is piecewise linear in B, so this is exact.
    """
    r = np.nan_to_num(np.asarray(replicas, dtype=float), nan=0.0)
    hours = len(r) * step_h
    od_all = float(r.sum() * step_h * prices.on_demand_usd_per_h)
    spot_cap = np.floor(prices.spot_max_share * r)
    best: Mix | None = None
    for b in range(int(np.ceil(r.max())) + 1 if len(r) else 1):
        above = np.maximum(r - b, 0.0)
        spot = np.minimum(above, spot_cap)
        od = above - spot
        cost = (b * hours * prices.reserved_usd_per_h
                + spot.sum() * step_h * prices.spot_usd_per_h
                + od.sum() * step_h * prices.on_demand_usd_per_h)
        if best is None or cost < best.cost_usd - 1e-9:
            best = Mix(reserved=b, on_demand_replica_h=float(od.sum() * step_h),
                       spot_replica_h=float(spot.sum() * step_h),
                       reserved_replica_h=float(b * hours), cost_usd=float(cost),
                       all_on_demand_usd=od_all, hours=hours)
    assert best is not None
    return best
