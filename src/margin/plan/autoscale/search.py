"""The clairvoyant bounds and the search for the cheapest policy that meets the SLO.

Two bounds: the *instant* one (knows the future, pods ready the moment they are asked for; no
policy meeting the SLO every hour can be cheaper) and the *reachable* one (the same schedule, each
pod asked for ``startup_s`` ahead so that it is ready in time: what perfect foresight buys once
start-up is paid). Static provisioning for the peak is always replayed as a candidate, so the
recommendation never costs more than never autoscaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from margin.plan.autoscale import hpa
from margin.plan.autoscale.advice import Advice, advise
from margin.plan.autoscale.latency import erlang_c_vec
from margin.plan.autoscale.policies import (HpaPolicy, RayServePolicy, RayServeSpec,
                                            SchedulePolicy, ThresholdPolicy, ThresholdSpec,
                                            reachable_schedule)
from margin.plan.autoscale.predictive import PredictivePolicy, PredictiveSpec, floor_schedule
from margin.plan.autoscale.sim import SimConfig, SimResult, simulate


RATE_WINDOW_S = 30   # the rate() range of the predictive request-rate layer (two 15-s scrapes)


def _over_counts(a: np.ndarray, lam_min: np.ndarray, r: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Expected requests over the SLO in each minute with ``r[m]`` replicas ready all minute.

    The queueing term uses the minute's mean rate (one Erlang C per minute); the fluid backlog
    is per second, by Lindley's recursion restarted each minute.
    """
    rr, k = cfg.model.replica_rps, cfg.model.concurrency
    service = cfg.model.service_s
    cap = (r * rr)[:, None]
    s = np.cumsum(a - cap, axis=1)
    q = s - np.minimum.accumulate(np.minimum(s, 0), axis=1)
    q_in = np.concatenate([np.zeros((len(a), 1)), q[:, :-1]], axis=1)
    servers = (r * k).astype(float)
    load = np.minimum(lam_min * service, servers * 0.999)
    c = erlang_c_vec(servers, load)[:, None]
    decay = ((servers - load) / service * 2 / max(cfg.ca2 + cfg.cs2, 1e-9))[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        budget = cfg.slo.latency_s - service - q_in / np.where(cap > 0, cap, np.nan)
        p = np.where(budget < 0, 1.0, c * np.exp(-decay * np.maximum(budget, 0)))
    p = np.where(servers[:, None] > 0, np.nan_to_num(p, nan=1.0), 1.0)
    return (a * np.clip(p, 0, 1)).sum(axis=1)


def _offsets(limit: int) -> list[int]:
    """0, 1, ... 8, then steps of about 15 %: the search grid above each minute's mean need."""
    out, k = list(range(0, 9)), 8
    while k < limit:
        k = max(k + 1, int(k * 1.15))
        out.append(k)
    return out


def clairvoyant_schedule(arrivals: np.ndarray, cfg: SimConfig, min_replicas: int = 1,
                         max_replicas: int = 10_000, repairs: int = 4) -> np.ndarray:
    """Fewest replica-minutes such that every hour meets the SLO, knowing the future.

    Replicas are set per minute and are ready at once. Within each hour the minutes share the
    hour's miss budget (5 % of its requests for a P95 SLO): a Lagrangian split, minimising
    sum(R_m) + mu x misses, with mu searched per hour. Each minute's candidates are its mean need
    plus 0..8 replicas, then steps of ~15 %, so the bound is exact to within one grid step.
    The split is then replayed; an hour that misses (backlog carried over a minute boundary,
    which the per-minute evaluation restarts) is re-split on a tighter budget, up to
    ``repairs`` times.
    """
    if cfg.slo.latency_s <= cfg.model.service_s:
        raise ValueError(f"the SLO ({cfg.slo.latency_s * 1000:g} ms) is not above the service time "
                         f"({cfg.model.service_s * 1000:g} ms = concurrency / replica rps)")
    assert cfg.smooth_s == 60, "the bound's minutes must be the simulator's queueing buckets"
    n_min = math.ceil(len(arrivals) / 60)
    m = math.ceil(len(arrivals) / 3600) * 60
    a = np.zeros(m * 60)
    a[: len(arrivals)] = arrivals
    a = a.reshape(m, 60)
    lam = a.mean(axis=1)
    need = np.maximum(np.ceil(a.mean(axis=1) / cfg.model.replica_rps).astype(np.int64),
                      min_replicas)
    peak_need = int(math.ceil(a.max() / cfg.model.replica_rps))     # the busiest second
    offs = _offsets(max(int(need.max() * 0.6) + 10, peak_need))
    cand = np.minimum(need[:, None] + np.array(offs)[None, :], max_replicas)    # (m, k)
    over = np.stack([_over_counts(a, lam, cand[:, j], cfg) for j in range(len(offs))], axis=1)
    hours = m // 60
    req_h = a.sum(axis=1).reshape(hours, 60).sum(axis=1)
    factor = np.ones(hours)
    sched = _lagrange(cand, over, factor * (1 - cfg.slo.quantile) * req_h)
    for _ in range(repairs):
        res = simulate(arrivals, SchedulePolicy(sched[:n_min]), cfg, int(sched[0]), startup_s=0)
        w = np.zeros(m * 60)
        w[: len(arrivals)] = res.misses_per_s
        miss_h = w.reshape(hours, 3600).sum(axis=1)
        bad = miss_h > (1 - cfg.slo.quantile) * req_h + 1e-9
        if not bad.any():
            break
        factor[bad] *= 0.7
        sched = _lagrange(cand, over, factor * (1 - cfg.slo.quantile) * req_h)
    return sched[:n_min]


def _lagrange(cand: np.ndarray, over: np.ndarray, budget: np.ndarray) -> np.ndarray:
    m = len(cand)
    hours = m // 60
    best_cost = np.full(hours, np.inf)
    best = cand[:, -1].copy()
    rows = np.arange(m)
    for mu in np.concatenate([[0.0], np.geomspace(1e-4, 1e6, 80)]):
        pick = np.argmin(cand + mu * over, axis=1)
        o = over[rows, pick].reshape(hours, 60).sum(axis=1)
        cost = cand[rows, pick].reshape(hours, 60).sum(axis=1)
        ok = (o <= budget + 1e-9) & (cost < best_cost)
        best_cost[ok] = cost[ok]
        sel = np.repeat(ok, 60)
        best[sel] = cand[rows, pick][sel]
    return best


@dataclass
class Candidate:
    family: str                      # hpa-cpu | hpa-inflight | ray-serve | threshold | ...
    label: str
    make: Callable[[], object]
    is_default: bool = False


@dataclass
class SearchResult:
    results: list[SimResult]
    clairvoyant: SimResult
    recommended: SimResult | None
    reachable: SimResult | None = None
    static: SimResult | None = None
    advice: Advice | None = None
    best_by_family: dict[str, SimResult] = field(default_factory=dict)
    defaults: dict[str, SimResult] = field(default_factory=dict)
    best_specs: dict[str, object] = field(default_factory=dict)
    min_replicas: int = 1
    max_replicas: int = 1

    def to_json(self) -> dict:
        return {
            "recommended": self.recommended.to_json() if self.recommended else None,
            "clairvoyant": self.clairvoyant.to_json(),
            "reachable": self.reachable.to_json() if self.reachable else None,
            "static": self.static.to_json() if self.static else None,
            "advice": self.advice.to_json() if self.advice else None,
            "best_by_family": {k: v.to_json() for k, v in self.best_by_family.items()},
            "defaults": {k: v.to_json() for k, v in self.defaults.items()},
            "all": [r.to_json() for r in self.results],
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
        }


def _hpa_spec(metric: str, target: float, down_s: int, lo: int, hi: int) -> hpa.HpaSpec:
    return hpa.HpaSpec(min_replicas=lo, max_replicas=hi, target=target, metric=metric,  # type: ignore[arg-type]
                       scale_down=replace(hpa.DEFAULT_SCALE_DOWN, stabilization_window_s=down_s))


def candidates(cfg: SimConfig, lo: int, hi: int, quick: bool = False) -> list[Candidate]:
    """The grid searched: HPA on CPU and on in-flight requests, Ray Serve, the threshold rule."""
    k = cfg.model.concurrency
    out: list[Candidate] = []
    cpu = [(0.6, 300), (0.8, 300)] if quick else \
        [(t, w) for t in (0.4, 0.5, 0.6, 0.7, 0.8) for w in (60, 300)]
    for tgt, w in cpu:
        spec = _hpa_spec("cpu", tgt, w, lo, hi)
        out.append(Candidate("hpa-cpu", f"cpu {tgt:.0%}, down window {w}s",
                             lambda spec=spec: HpaPolicy(spec), tgt == 0.7 and w == 300))
    inflight = [(0.75, 300)] if quick else [(0.4, 300), (0.5, 300), (0.75, 300), (1.0, 300),
                                           (0.5, 60)]
    for share, w in inflight:
        spec = _hpa_spec("inflight", round(share * k, 3), w, lo, hi)
        out.append(Candidate("hpa-inflight", f"in-flight {share * k:g}/pod, down window {w}s",
                             lambda spec=spec: HpaPolicy(spec)))
    ray = [(0.75, 600)] if quick else [(s_, d) for s_ in (0.5, 0.75, 1.0) for d in (60, 600)]
    for share, delay in ray:
        rs = RayServeSpec(target_ongoing_requests=round(share * k, 3), min_replicas=lo,
                          max_replicas=hi, downscale_delay_s=delay)
        out.append(Candidate("ray-serve", f"target {share * k:g} ongoing, down delay {delay:g}s",
                             lambda rs=rs: RayServePolicy(rs)))
    ray_default = RayServeSpec(min_replicas=lo, max_replicas=hi)
    out.append(Candidate("ray-serve", "Ray defaults (target 2, 30 s / 600 s)",
                         lambda: RayServePolicy(ray_default), True))
    th = ThresholdSpec(min_replicas=lo, max_replicas=hi, p95_high_ms=cfg.slo.latency_s * 1000,
                       p95_low_ms=cfg.slo.latency_s * 500)
    out.append(Candidate("threshold", "CPU>70% or P95>SLO or queue>100: +2; all low: -1",
                         lambda: ThresholdPolicy(th), True))
    return out


def predictive_candidates(cfg: SimConfig, lo: int, hi: int, history: np.ndarray,
                          arrivals: np.ndarray, valid: np.ndarray | None, quick: bool = False
                          ) -> list[Candidate]:
    """Forecast floors (the forecast, a share of it, or a band) + an HPA on top, no look-ahead.

    ``history`` is the trace before the replay (per second, NaN in gaps): the forecast for each
    replayed day is made from it and the replayed days before that day.
    """
    k, rps = cfg.model.concurrency, cfg.model.replica_rps
    seen = np.where(valid, arrivals, np.nan) if valid is not None else arrivals
    full = np.concatenate([history, seen])
    # (band, share of it planned, reactive metric, target: utilisation, share of concurrency
    # (in-flight) or of a replica's requests/s (rate), scale-down window). The request-rate
    # variants (chosen on the shared ServeGen and NASA traces) hold pods for 15 minutes:
    # ServeGen's load dips for one 10-minute window and comes back, and a pod given back in
    # the dip is a minute late for the return.
    rate = [("point", 0.7, "rate", 0.75, 900)]
    grid = [("point", 1.0, "inflight", 0.625, 300), ("upper", 1.0, "inflight", 0.75, 300)] + \
        rate if quick else \
        [("point", 1.0, "inflight", 0.625, 300), ("point", 0.7, "inflight", 0.625, 300),
         ("point", 1.0, "inflight", 0.5, 300), ("point", 1.0, "cpu", 0.5, 60),
         ("mid", 1.0, "inflight", 0.625, 300), ("upper", 1.0, "inflight", 0.75, 300)] + rate + \
        [("point", 0.85, "rate", 0.75, 900), ("point", 0.7, "rate", 0.8, 900)]
    floors: dict[tuple[str, float], np.ndarray] = {}
    out = []
    for band, share, metric, target, down in grid:
        value = {"inflight": round(target * k, 3), "rate": round(target * rps, 3)}.get(metric,
                                                                                     target)
        reactive = _hpa_spec(metric, value, down, lo, hi)
        if metric == "rate":
            # a 30-s rate() (two 15-s scrapes) sees a jump 15 s sooner than the usual 1m
            reactive = replace(reactive, rate_window_s=RATE_WINDOW_S)
        spec = PredictiveSpec(reactive=reactive, band=band, floor_share=share)
        if (band, share) not in floors:
            floors[band, share] = floor_schedule(full, len(history), len(arrivals), cfg, spec)
        out.append(Candidate("predictive", spec.label,
                             lambda spec=spec, f=floors[band, share]: PredictivePolicy(spec, f)))
    return out


def search(arrivals: np.ndarray, cfg: SimConfig, valid: np.ndarray | None = None,
           min_replicas: int = 1, max_replicas: int | None = None, quick: bool = False,
           progress: Callable[[str], None] | None = None,
           history: np.ndarray | None = None) -> SearchResult:
    sched = clairvoyant_schedule(arrivals, cfg, min_replicas)
    need_peak = int(sched.max())
    hi = max_replicas or max(min_replicas + 1, math.ceil(need_peak * 1.5))
    sched = np.minimum(sched, hi)
    initial = int(sched[0])
    clair = simulate(arrivals, SchedulePolicy(sched), cfg, initial, valid, startup_s=0)
    clair.policy = "clairvoyant"
    reach_sched = reachable_schedule(sched, cfg.startup_s)
    reach = simulate(arrivals, SchedulePolicy(reach_sched, "reachable"), cfg,
                     int(reach_sched[0]), valid)
    reach.policy = "reachable"
    reach.params = {"label": f"clairvoyant, each pod asked for {cfg.startup_s} s ahead"}
    peak = int(sched.max())
    static = simulate(arrivals, SchedulePolicy(np.full(len(sched), peak), "static"), cfg, peak,
                      valid)
    static.policy = "static"
    why = "the clairvoyant peak" if peak >= need_peak else \
        f"the --max-replicas cap; the busiest minute needs {need_peak}"
    static.params = {"label": f"{peak} replicas all the time ({why})", "replicas": peak}
    results: list[SimResult] = []
    best: dict[str, SimResult] = {}
    defaults: dict[str, SimResult] = {}
    specs: dict[str, object] = {}
    cands = candidates(cfg, min_replicas, hi, quick)
    if cfg.startup_s <= 3600:
        if progress:
            progress("forecasting each replayed day from the days before it")
        cands += predictive_candidates(cfg, min_replicas, hi,
                                       np.array([]) if history is None else history,
                                       arrivals, valid, quick)
    for cand in cands:
        if progress:
            progress(f"{cand.family}: {cand.label}")
        pol = cand.make()
        res = simulate(arrivals, pol, cfg, initial, valid)  # type: ignore[arg-type]
        res.policy = cand.family
        res.params = {"label": cand.label, **res.params}
        results.append(res)
        if cand.is_default:
            defaults[cand.family] = res
        cur = best.get(cand.family)
        if cur is None or _better(res, cur):
            best[cand.family] = res
            specs[cand.family] = getattr(pol, "spec", None)
    results.append(static)
    best["static"] = static
    recommended, advice = advise(results, clair, reach, static, cfg, need_peak, hi)
    return SearchResult(results=results, clairvoyant=clair, recommended=recommended,
                        reachable=reach, static=static, advice=advice,
                        best_by_family=best, defaults=defaults, best_specs=specs,
                        min_replicas=min_replicas, max_replicas=hi)


def _better(a: SimResult, b: SimResult) -> bool:
    """Meeting the SLO beats not meeting it; then cheaper; among misses, fewer misses."""
    if a.meets_slo != b.meets_slo:
        return a.meets_slo
    if a.meets_slo:
        return a.cost_usd < b.cost_usd
    return (a.hours_over_slo_share, a.over_slo_share) < (b.hours_over_slo_share, b.over_slo_share)
