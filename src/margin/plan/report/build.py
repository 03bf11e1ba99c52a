"""``margin plan report``: run every planner step once and write the report folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from margin.plan.costs import TokenPrices, unit_economics
from margin.plan.manifests import to_yaml
from margin.plan.options import CapacityOptions
from margin.plan.planner import (autoscale_plan, build_context, capacity_plan, forecast_dict,
                                 run_forecast, whatif_plan)
from margin.plan.report.html import render_html
from margin.plan.traces import Trace
from margin.plan.whatif import WhatIfAssumptions


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
    rm, basis = timed("what-if roadmap", lambda: whatif_plan(ctx, opts, prices,
                                                             WhatIfAssumptions(), auto, cap,
                                                             serving))
    step("writing the report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "hpa.yaml").write_text(to_yaml(auto.hpa, auto.headers["hpa"]))
    (out / "keda.yaml").write_text(to_yaml(auto.keda, auto.headers["keda"]))
    (out / "ray-serve.yaml").write_text(to_yaml(auto.ray, auto.headers["ray"]))
    history = _history(ctx, fc)
    doc = {
        "source": trace.source, "format": trace.format,
        "load": ctx.analysis.to_dict(), "costs": econ, "forecast": forecast_dict(fc),
        "capacity": cap, "autoscale": auto.to_dict(),
        "roadmap": {**rm.to_dict(), "basis": basis}, "assumptions": ctx.assumptions(),
        "timings_s": timings,
    }
    (out / "plan.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 |
                                                 orjson.OPT_SERIALIZE_NUMPY |
                                                 orjson.OPT_NON_STR_KEYS, default=_default))
    series = {name: r.replicas_per_min for name, r in _policy_rows(auto).items()}
    demand = _demand_per_min(ctx, auto)
    page = {**doc, "_manifests": {"hpa.yaml": auto.hpa, "keda.yaml": auto.keda,
                                  "ray-serve.yaml": auto.ray}}
    (out / "index.html").write_text(render_html(page, history, fc, series, demand,
                                                auto.start_s, trace.absolute_time))
    return _summary(doc, out)


def _default(o: object) -> object:
    if hasattr(o, "to_dict"):
        return o.to_dict()
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


def _summary(doc: dict, out: Path) -> list[str]:
    load = doc["load"]
    minute = min(load["rps"], key=lambda r: abs(r["resolution_s"] - 60))
    bt = doc["forecast"]["backtest"]
    cap = doc["capacity"]
    auto = doc["autoscale"]
    rec = auto["recommended"]
    rm = doc["roadmap"]
    lines = [
        f"{doc['source']}: {load['requests']:,.0f} requests, mean {minute['mean']:.3g} rps, "
        f"{minute['resolution_s']:g}-s P99 {minute['p99']:.3g} rps, "
        f"ca² {load['burstiness']['ca2']:.3g}",
    ]
    if bt:
        lines.append(f"forecast: WAPE {bt['wape_model']:.3f} vs {bt['wape_naive_user_pick']:.3f} "
                     f"for the naive a user would pick, 80 % intervals cover "
                     f"{bt['coverage']:.0%}")
    lines.append(f"capacity: peak {cap['peak_replicas']} replicas (queueing) vs seed rule "
                 f"{cap['seed_rule']['min']}–{cap['seed_rule']['max']}; cheapest mix "
                 f"{cap['mix']['reserved']} reserved, saves {cap['mix']['saving_share']:.0%}")
    if rec:
        lines.append(f"autoscaling: {rec['policy']} ({rec['params'].get('label')}) "
                     f"{rec['replica_hours']:.0f} replica-h vs clairvoyant "
                     f"{auto['clairvoyant']['replica_hours']:.0f}, static "
                     f"{auto['static_replica_hours']:.0f}; SLO met: {rec['meets_slo']}")
    lines.append(f"roadmap: {len(rm['steps'])} steps save ${rm['total_monthly_saving_usd']:,.0f}"
                 f"/month of ${rm['api_monthly_usd'] + rm['infra_monthly_usd']:,.0f}")
    lines.append(f"wrote {out}/index.html, plan.json, hpa.yaml, keda.yaml, ray-serve.yaml")
    return lines
