"""Replay per-second arrivals through an autoscaling policy.

Each second: pods whose start-up delay has passed become ready; the ready pods serve up to
``ready x replica_rps`` requests (fluid: what is not served waits as backlog); policies are asked
for a replica count on their own interval and read metrics ``metric_lag_s`` old, averaged over
``metric_window_s``. New pods cost money from the moment they are requested; removed pods stop
at once (starting ones first). Latency and SLO misses are computed afterwards, vectorised, by
:mod:`margin.plan.autoscale.latency`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from margin.plan.autoscale.latency import (bucket_mean, latency_quantile_scalar,
                                           per_second_latency)
from margin.plan.capacity import ReplicaModel, SloTarget


@dataclass(frozen=True)
class SimConfig:
    model: ReplicaModel
    slo: SloTarget
    startup_s: int = 60            # from "pod requested" to "pod serving" (image pull, model load)
    metric_lag_s: int = 30         # how old the newest metric sample is (scrape + rule intervals)
    metric_window_s: int = 60      # what one metric sample averages over
    ca2: float = 1.0               # arrival variability (from the trace)
    cs2: float = 1.0               # service-time variability
    usd_per_replica_h: float = 1.0
    smooth_s: int = 60             # the queueing term sees each minute's mean arrival rate
    hourly_slo_share: float = 0.01  # a policy meets the SLO when at most this share of hours miss


class Observation:
    """What a policy may read at time ``t``: the cluster's state now, metrics from the past."""

    def __init__(self, sim: "_Run", t: int) -> None:
        self._sim, self.t = sim, t
        self.spec = sim.spec
        self.ready = sim.ready
        self.starting = len(sim.pending)

    def _range(self, window_s: int | None) -> tuple[int, int]:
        w = window_s or self._sim.cfg.metric_window_s
        end = max(0, self.t - self._sim.cfg.metric_lag_s)
        return max(0, end - w), end

    def cpu(self, window_s: int | None = None) -> float:
        """Average busy share of the ready pods (1.0 = every slot working all the time)."""
        a, b = self._range(window_s)
        cap = float(self._sim.cap[a:b].sum())
        return float(self._sim.served[a:b].sum()) / cap if cap > 0 else 0.0

    def inflight_total(self, window_s: int | None = None) -> float:
        """Requests in service plus waiting, averaged over the window."""
        a, b = self._range(window_s)
        if b <= a:
            return 0.0
        s = self._sim.cfg.model.service_s
        return float(self._sim.served[a:b].sum() * s + self._sim.backlog[a:b].sum()) / (b - a)

    def inflight_per_pod(self, window_s: int | None = None) -> float:
        a, b = self._range(window_s)
        ready = float(self._sim.readyc[a:b].mean()) if b > a else float(self.ready)
        return self.inflight_total(window_s) / ready if ready > 0 else 0.0

    def arrival_rate(self, window_s: int | None = None) -> float:
        """Requests arriving per second over the window (what the gateway counts as they come
        in, ``rate(margin_requests_total[1m])``): the demand, not what the pods managed."""
        a, b = self._range(window_s)
        return float(self._sim.arr[a:b].mean()) if b > a else 0.0

    def queue(self, window_s: int | None = None) -> float:
        a, b = self._range(window_s)
        return float(self._sim.backlog[a:b].mean()) if b > a else 0.0

    def p95_ms(self, window_s: int | None = None) -> float:
        """Modelled P95 latency at the window's average state (ready pods, backlog, arrivals)."""
        a, b = self._range(window_s)
        if b <= a:
            return 0.0
        sim, cfg = self._sim, self._sim.cfg
        lat = latency_quantile_scalar(float(sim.readyc[a:b].mean()),
                                      float(sim.backlog[max(0, a - 1):b - 1].mean()) if b > 1
                                      else 0.0, float(sim.lam[a:b].mean()),
                                      cfg.model.concurrency, cfg.model.replica_rps,
                                      cfg.slo.quantile, cfg.ca2, cfg.cs2)
        return 1000 * min(lat, 3600.0)


class Policy(Protocol):
    name: str
    interval_s: int

    def decide(self, obs: Observation) -> int: ...

    def params(self) -> dict: ...


@dataclass
class SimResult:
    policy: str
    params: dict
    seconds: int
    replica_hours: float
    cost_usd: float
    over_slo_share: float
    hours_over_slo_share: float
    meets_slo: bool
    peak_queue: float
    scale_events: int
    mean_replicas: float
    max_replicas: int
    replicas_per_min: np.ndarray = field(repr=False)
    misses_per_s: np.ndarray = field(repr=False)   # expected requests over the SLO each second

    def to_json(self, with_series: bool = False) -> dict:
        d = {k: v for k, v in self.__dict__.items()
             if k not in ("replicas_per_min", "misses_per_s")}
        if with_series:
            d["replicas_per_min"] = [round(float(x), 3) for x in self.replicas_per_min]
        return d


class _Run:
    def __init__(self, arrivals: np.ndarray, cfg: SimConfig, initial: int) -> None:
        n = len(arrivals)
        self.cfg = cfg
        self.arr = np.asarray(arrivals, dtype=float)
        self.lam = bucket_mean(self.arr, cfg.smooth_s)
        self.spec = initial
        self.ready = initial
        self.pending: deque[int] = deque()
        self.served = np.zeros(n)
        self.cap = np.zeros(n)
        self.backlog = np.zeros(n)
        self.readyc = np.zeros(n, dtype=np.int64)
        self.specc = np.zeros(n, dtype=np.int64)


def _serve(run: _Run, a: int, b: int, q: float) -> float:
    """Seconds [a, b) with a constant number of ready pods; returns the backlog after."""
    cap = run.ready * run.cfg.model.replica_rps
    seg = run.arr[a:b]
    run.cap[a:b] = cap
    run.readyc[a:b] = run.ready
    run.specc[a:b] = run.spec
    if q == 0.0 and seg.max() <= cap:      # the common case: no queue builds up
        run.served[a:b] = seg
        run.backlog[a:b] = 0.0
        return 0.0
    s = np.cumsum(seg - cap)
    # Lindley's recursion q_t = max(0, q_{t-1} + a_t - cap) in closed form, from backlog q.
    qs = np.maximum(q + s, s - np.minimum.accumulate(np.minimum(s, 0.0)))
    prev = np.concatenate([[q], qs[:-1]])
    run.served[a:b] = prev + seg - qs
    run.backlog[a:b] = qs
    return float(qs[-1])


def simulate(arrivals: np.ndarray, policy: Policy, cfg: SimConfig, initial_replicas: int,
             valid: np.ndarray | None = None, startup_s: int | None = None) -> SimResult:
    """Replay ``arrivals`` (requests in each second) through ``policy``.

    ``valid`` masks seconds inside trace gaps out of the statistics.
    """
    run = _Run(arrivals, cfg, initial_replicas)
    startup = cfg.startup_s if startup_s is None else startup_s
    pending = run.pending
    interval = max(1, int(policy.interval_s))
    n = len(run.arr)
    q = 0.0
    events = 0
    t = 0
    # A reactive policy has nothing to read until its first metric window has filled.
    warmup = cfg.metric_lag_s + cfg.metric_window_s if getattr(policy, "needs_metrics", True) \
        else 1
    while t < n:
        if t >= warmup:
            want = int(policy.decide(Observation(run, t)))
            if want != run.spec:
                events += 1
                if want > run.spec:
                    pending.extend([t + startup] * (want - run.spec))
                else:
                    drop = run.spec - want
                    while drop and pending:
                        pending.pop()
                        drop -= 1
                    run.ready -= drop
                run.spec = want
        end = min(n, t + interval)
        while t < end:
            while pending and pending[0] <= t:
                pending.popleft()
                run.ready += 1
            nxt = min(end, pending[0]) if pending else end
            q = _serve(run, t, nxt, q)
            t = nxt
    return _summarise(run, policy, cfg, events, valid)


def _summarise(run: _Run, policy: Policy, cfg: SimConfig, events: int,
               valid: np.ndarray | None) -> SimResult:
    arr, ready, spec, backlog = run.arr, run.readyc, run.specc, run.backlog
    backlog_in = np.concatenate([[0.0], backlog[:-1]])
    p_over, _ = per_second_latency(ready, backlog_in, run.lam, cfg.model.concurrency,
                                   cfg.model.replica_rps, cfg.slo.latency_s, cfg.slo.quantile,
                                   cfg.ca2, cfg.cs2)
    mask = np.ones(len(arr), bool) if valid is None else valid
    w = arr * mask
    over = float((w * p_over).sum() / w.sum()) if w.sum() > 0 else 0.0
    n_h = len(arr) // 3600
    if n_h:
        wh = w[: n_h * 3600].reshape(n_h, 3600)
        oh = (w * p_over)[: n_h * 3600].reshape(n_h, 3600)
        busy = wh.sum(axis=1) > 0
        hour_share = oh.sum(axis=1)[busy] / wh.sum(axis=1)[busy]
        hours_over = float((hour_share > 1 - cfg.slo.quantile).mean()) if busy.any() else 0.0
    else:
        hours_over = float(over > 1 - cfg.slo.quantile)
    replica_h = float(spec.sum() / 3600)
    n_min = max(1, len(spec) // 60)
    per_min = spec[: n_min * 60].reshape(n_min, -1).mean(axis=1) if len(spec) >= 60 else \
        np.array([spec.mean()])
    return SimResult(
        policy=policy.name, params=policy.params(), seconds=len(arr), replica_hours=replica_h,
        cost_usd=replica_h * cfg.usd_per_replica_h, over_slo_share=over,
        hours_over_slo_share=hours_over,
        meets_slo=over <= 1 - cfg.slo.quantile and hours_over <= cfg.hourly_slo_share,
        peak_queue=float(backlog.max()) if len(backlog) else 0.0, scale_events=events,
        mean_replicas=float(spec.mean()), max_replicas=int(spec.max()), replicas_per_min=per_min,
        misses_per_s=w * p_over)
