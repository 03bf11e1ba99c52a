"""``margin plan report``: run every planner step once and write the report folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from margin.plan.costs import TokenPrices, UnitEconomics, unit_economics
from margin.plan.forecast import ForecastResult
from margin.plan.load import LoadAnalysis
from margin.plan.options import CapacityOptions
from margin.plan.planner import (AutoscalePlan, autoscale_plan, build_context, capacity_plan,
                                 run_forecast, whatif_plan)
from margin.plan.report.html import render_html
from margin.plan.results import Assumptions, CapacityPlan, WhatIfPlan
from margin.plan.traces import Trace
from margin.plan.whatif import WhatIfAssumptions


@dataclass(frozen=True)
class PlanReport:
    """Everything ``margin plan report`` computed once; ``plan.json`` is its ``to_json()``."""
    source: str
    format: str
    absolute_time: bool
    load: LoadAnalysis
    costs: UnitEconomics | None
    forecast: ForecastResult
    capacity: CapacityPlan
    autoscale: AutoscalePlan
    whatif: WhatIfPlan
    assumptions: Assumptions
    timings_s: dict[str, float]

    def to_json(self) -> dict:
        return {
            "source": self.source, "format": self.format, "load": self.load.to_json(),
            "costs": self.costs.to_json() if self.costs else None,
            "forecast": self.forecast.to_json(), "capacity": self.capacity.to_json(),
            "autoscale": self.autoscale.to_json(), "roadmap": self.whatif.to_json(),
            "assumptions": self.assumptions.to_json(), "timings_s": self.timings_s,
        }


def build_report(trace: Trace, opts: CapacityOptions, prices: TokenPrices, out: Path,
                 horizon_s: float | None, quick: bool, keda_schema: str | None,
                 step: Callable[[str], None], serving: str = "auto") -> list[str]:
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        step(name)
        t0 = time.perf_counter()
        value = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        return value

    ctx = timed("analysing load", lambda: build_context(trace, opts))
    econ = timed("unit economics", lambda: unit_economics(trace, prices))
    fc = timed("forecasting with a backtest",
               lambda: run_forecast(trace, horizon_s, None, opts.growth_monthly))
    cap = timed("capacity over the horizon", lambda: capacity_plan(ctx, opts, fc))
    auto = timed("replaying autoscaling policies",
                 lambda: autoscale_plan(ctx, opts, quick=quick, progress=step,
                                        keda_schema=keda_schema))
    wi = timed("what-if roadmap", lambda: whatif_plan(ctx, opts, prices, WhatIfAssumptions(),
                                                      auto, cap, serving))
    step("writing the report")
    out.mkdir(parents=True, exist_ok=True)
    written = auto.write(out)
    history = _history(ctx, fc)
    rep = PlanReport(source=trace.source, format=trace.format,
                     absolute_time=trace.absolute_time, load=ctx.analysis, costs=econ,
                     forecast=fc, capacity=cap, autoscale=auto, whatif=wi,
                     assumptions=ctx.assumptions(), timings_s=timings)
    (out / "plan.json").write_bytes(orjson.dumps(rep.to_json(), option=orjson.OPT_INDENT_2 |
                                                 orjson.OPT_SERIALIZE_NUMPY |
                                                 orjson.OPT_NON_STR_KEYS, default=_default))
    series = {name: r.replicas_per_min for name, r in _policy_rows(auto).items()}
    demand = _demand_per_min(ctx, auto)
    (out / "index.html").write_text(render_html(rep, history, series, demand))
    return _summary(rep, out, written)


def _default(o: object) -> object:
    if hasattr(o, "to_json"):
        return o.to_json()
    raise TypeError(type(o).__name__)


def _history(ctx, fc) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    from margin.plan.load import rate_series
    s = rate_series(ctx.trace, fc.step_s)
    keep = min(len(s.values), max(len(fc.point) * 3, 48))
    return s.times()[-keep:], s.values[-keep:]


def _policy_rows(auto) -> dict:  # noqa: ANN001
    res = auto.search
    rows = {"clairvoyant (lower bound)": res.clairvoyant}
    if res.recommended is not None:
        rows[f"recommended: {res.recommended.policy}"] = res.recommended
    for fam, r in res.defaults.items():
        if r is not res.recommended:
            rows[f"{fam} (defaults)"] = r
    return rows


def _demand_per_min(ctx, auto) -> np.ndarray:  # noqa: ANN001
    from margin.plan.autoscale import arrivals_for_replay
    arr = arrivals_for_replay(ctx.trace, auto.seconds / 86400).per_second
    n = len(arr) // 60 * 60
    per_min = arr[:n].reshape(-1, 60).mean(axis=1) if n else arr
    return per_min / ctx.model.replica_rps


def _summary(rep: PlanReport, out: Path, written: list[str]) -> list[str]:
    load = rep.load
    minute = load.rps_at(60.0)
    bt = rep.forecast.backtest
    cap = rep.capacity
    auto = rep.autoscale
    rec = auto.search.recommended
    rm = rep.whatif.roadmap
    lines = [
        f"{rep.source}: {load.requests:,.0f} requests, mean {minute.mean:.3g} rps, "
        f"{minute.resolution_s:g}-s P99 {minute.p99:.3g} rps, ca² {load.burstiness.ca2:.3g}",
    ]
    if bt:
        lines.append(f"forecast: WAPE {bt.wape_model:.3f} vs {bt.wape_naive_user_pick:.3f} "
                     f"for the naive a user would pick, 80 % intervals cover {bt.coverage:.0%}")
    lines.append(f"capacity: peak {cap.peak_replicas} replicas (queueing) vs rule of thumb "
                 f"{cap.rule_of_thumb.min}–{cap.rule_of_thumb.max}; cheapest mix "
                 f"{cap.mix.reserved} reserved, saves {cap.mix.saving_share:.0%}")
    if rec:
        lines.append(f"autoscaling: {rec.policy} ({rec.params.get('label')}) "
                     f"{rec.replica_hours:.0f} replica-h vs clairvoyant "
                     f"{auto.search.clairvoyant.replica_hours:.0f}, reachable "
                     f"{auto.search.reachable.replica_hours if auto.search.reachable else 0:.0f}"
                     f", static "
                     f"{auto.static_replica_hours:.0f}; SLO met: {rec.meets_slo}")
    lines.append(f"roadmap: {len(rm.steps)} steps save ${rm.total_saving_usd:,.0f}"
                 f"/month of ${rm.api_monthly_usd + rm.infra_monthly_usd:,.0f}")
    lines.append(f"wrote {out}/index.html, plan.json, {', '.join(written)}")
    return lines
