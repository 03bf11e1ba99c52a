"""Where the predictive policy's replica-hours above the reachable bound come from (the
"what is left" table of docs/planner.md): the recommended predictive variant replayed with one
part changed at a time, on the same 7 days `margin plan autoscale` replays.

Two kinds of rows. *Counterfactuals* change the policy (no floor, no scale-down hold, a hotter
target) or the cluster (no metric lag, instant pods). *Oracle floors* replace the forecast
with what happened: each hour's true mean rate, or each hour's busiest 10 minutes. They look
ahead and are diagnostics only, never candidates: they say how much any forecast of the hour
(a calibrated quantile, a blend with the recent level, an hour-of-week quantile) could buy.

Run from the repository root, with the shared data next to it:
    PYTHONPATH=src python docs/planner_autoscale_gap.py [TRACE] [SIM_DAYS]
(ServeGen by default; about a minute on 2 cores).
"""

import sys
from dataclasses import replace

import numpy as np

from margin.plan.autoscale import hpa
from margin.plan.autoscale.policies import SchedulePolicy, reachable_schedule
from margin.plan.autoscale.predictive import (PredictivePolicy, PredictiveSpec, floor_schedule,
                                              peak_factor_before)
from margin.plan.autoscale.search import RATE_WINDOW_S, clairvoyant_schedule
from margin.plan.autoscale.sim import SimConfig, simulate
from margin.plan.capacity import replicas_for_slo
from margin.plan.options import CapacityOptions
from margin.plan.planner import arrivals_for_replay, build_context, sim_config
from margin.plan.traces import load_trace

trace = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/traces/servegen_m_large_rate_600s.csv"
opts = replace(CapacityOptions(), sim_days=float(sys.argv[2]) if len(sys.argv) > 2 else 7.0)
ctx = build_context(load_trace(trace), opts)
arr = arrivals_for_replay(ctx.trace, opts.sim_days)
cfg = sim_config(ctx, opts)
a, valid = arr.per_second, arr.valid
full = np.concatenate([arr.before, np.where(valid, a, np.nan) if valid is not None else a])

sched = clairvoyant_schedule(a, cfg, opts.min_replicas)
hi = opts.max_replicas or max(opts.min_replicas + 1, int(np.ceil(sched.max() * 1.5)))
sched = np.minimum(sched, hi)
reach_s = reachable_schedule(sched, cfg.startup_s)
reach = simulate(a, SchedulePolicy(reach_s, "reachable"), cfg, int(reach_s[0]), valid).replica_hours
busy = float(np.nansum(a * (valid if valid is not None else 1))) / 3600 / cfg.model.replica_rps
print(f"reachable bound {reach:,.0f} replica-hours; every replica busy all the time {busy:,.0f}")


def spec_for(target_rps: float, down_s: int, share: float) -> PredictiveSpec:
    r = hpa.HpaSpec(min_replicas=opts.min_replicas, max_replicas=hi, target=target_rps,
                    metric="rate", rate_window_s=RATE_WINDOW_S,
                    scale_down=replace(hpa.DEFAULT_SCALE_DOWN, stabilization_window_s=down_s))
    return PredictiveSpec(reactive=r, band="point", floor_share=share)


def show(label: str, floor: np.ndarray, spec: PredictiveSpec, c: SimConfig = cfg,
         startup_s: int | None = None) -> None:
    res = simulate(a, PredictivePolicy(spec, floor), c, int(sched[0]), valid, startup_s=startup_s)
    print(f"| {label} | {res.replica_hours:,.0f} | {res.replica_hours / reach:.2f}x | "
          f"{res.over_slo_share:.2%} | {res.hours_over_slo_share:.1%} | "
          f"{'yes' if res.meets_slo else 'no'} |", flush=True)


rec = spec_for(0.75 * cfg.model.replica_rps, 900, 0.7)
floor = floor_schedule(full, len(arr.before), len(a), cfg, rec)
none = np.zeros(len(floor), dtype=int)
print("| variant | replica-hours | x reachable | requests over SLO | hours missing | meets |")
print("| --- | --- | --- | --- | --- | --- |")
show("recommended: 70 % of the forecast floor + request rate 1.5/s per pod, down window 900 s",
     floor, rec)
show("the same without the floor", none, rec)
show("without the 900-s hold (down window 0)", floor, spec_for(1.5, 0, 0.7))
show("target 1.8/s per pod (90 %)", floor, spec_for(1.8, 900, 0.7))
show("metric lag 0 s", floor, rec, c=replace(cfg, metric_lag_s=0))
show("pods ready at once (start-up 0)", floor, rec, startup_s=0)
show("metric lag 0 s, target 1.8/s", floor, spec_for(1.8, 900, 0.7),
     c=replace(cfg, metric_lag_s=0))
show("start-up 0, target 1.8/s", floor, spec_for(1.8, 900, 0.7), startup_s=0)
show("lag 0 and start-up 0, target 1.8/s", floor, spec_for(1.8, 900, 0.7),
     c=replace(cfg, metric_lag_s=0), startup_s=0)

# Oracle floors: each hour sized (queueing model, peaks-inside-an-hour factor) on what it held.
n_h = len(a) // 3600
hours = a[: n_h * 3600].reshape(n_h, 3600)
pf = peak_factor_before(full, len(arr.before), 7 * 24)


def oracle(rate_per_hour: np.ndarray) -> np.ndarray:
    per_h = [replicas_for_slo(round(float(x), 3), cfg.model, cfg.slo, cfg.ca2, cfg.cs2)
             for x in rate_per_hour]
    out = reachable_schedule(np.repeat(per_h, 60), cfg.startup_s)
    return np.minimum(np.concatenate([out, np.full(max(0, len(floor) - len(out)),
                                                    out[-1])])[: len(floor)], hi)


mean_h = hours.mean(axis=1)
busiest = hours.reshape(n_h, 6, 600).mean(axis=2).max(axis=1)
for share in (0.7, 1.0):
    for tgt in (1.5, 1.7):
        show(f"ORACLE floor: {share:.0%} of each hour's true mean + rate {tgt}/s, down 900 s",
             oracle(mean_h * share * pf), spec_for(tgt, 900, share))
show("ORACLE floor: each hour's busiest 10 min + rate 1.8/s, down 300 s", oracle(busiest),
     spec_for(1.8, 300, 1.0))
for m in (1.0, 0.9):
    sch = oracle(busiest * m)
    res = simulate(a, SchedulePolicy(sch, "blocks"), cfg, int(sch[0]), valid)
    print(f"| ORACLE hourly blocks alone, {m:.0%} of each hour's busiest 10 min, no reactive "
          f"layer | {res.replica_hours:,.0f} | {res.replica_hours / reach:.2f}x | "
          f"{res.over_slo_share:.2%} | {res.hours_over_slo_share:.1%} | "
          f"{'yes' if res.meets_slo else 'no'} |")
