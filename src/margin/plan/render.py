"""Terminal output for the planner commands (rich tables; numbers with their assumptions)."""

from __future__ import annotations

import datetime as dt
import math

from rich.console import Console
from rich.table import Table

from margin.plan.autoscale.sim import SimResult
from margin.plan.costs import UnitEconomics
from margin.plan.forecast import ForecastResult
from margin.plan.load import LoadAnalysis
from margin.plan.planner import AutoscalePlan
from margin.plan.results import Assumptions, BacktestReport, CapacityPlan, WhatIfPlan

_SPARK = "▁▂▃▄▅▆▇█"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def usd(x: float | None) -> str:
    if x is None:
        return "–"
    if x != 0 and abs(x) < 0.01:
        return f"${x:.3g}"
    return f"${x:,.2f}" if abs(x) < 1e6 else f"${x / 1e6:,.2f}M"


def when(ts: float, absolute: bool) -> str:
    if absolute:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    d, rem = divmod(int(ts), 86400)
    return f"day {d} {rem // 3600:02d}:{rem % 3600 // 60:02d}"


def spark(values: list[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    out = []
    for v in values:
        if v is None or math.isnan(v):
            out.append(" ")
        else:
            out.append(_SPARK[int((v - lo) / (hi - lo) * 7) if hi > lo else 3])
    return "".join(out)


def analysis(console: Console, a: LoadAnalysis, econ: UnitEconomics | None) -> None:
    console.print(f"[bold]{a.source}[/] ({a.format}): {a.requests:,.0f} requests over "
                  f"{a.span_s / 3600:,.1f} h ({a.observed_s / 3600:,.1f} h observed, "
                  f"{len(a.gaps)} gap(s))")
    t = Table("resolution", "mean rps", "P50", "P95", "P99", "max", "peak/mean")
    for r in a.rps:
        t.add_row(f"{r.resolution_s:g} s", fmt(r.mean), fmt(r.p50), fmt(r.p95), fmt(r.p99),
                  fmt(r.max), fmt(r.peak_to_mean))
    console.print(t)
    if a.tokens_per_s:
        t = Table("resolution", "mean tokens/s", "P95", "P99", "max")
        for r in a.tokens_per_s:
            t.add_row(f"{r.resolution_s:g} s", fmt(r.mean), fmt(r.p95), fmt(r.p99), fmt(r.max))
        console.print(t)
        console.print(f"tokens per request: input {fmt(a.mean_input_tokens)}, output "
                      f"{fmt(a.mean_output_tokens)}")
    b = a.burstiness
    console.print(f"burstiness: inter-arrival CV {fmt(b.cv_interarrival)}, dispersion of 1-s "
                  f"counts {fmt(b.dispersion_1s)} → ca² = {fmt(b.ca2)} ({b.source})")
    console.print(f"daily profile (rps by hour, 0–23): {spark(a.profile.daily)}  "
                  f"peak hour {_argmax(a.profile.daily)}")
    if a.profile.weekly:
        console.print(f"weekly profile (from {a.profile.weekly_start}): "
                      f"{spark(a.profile.weekly[::4])}")
    for n in a.notes:
        console.print(f"[dim]note: {n}[/]")
    if econ:
        console.print(f"cost ({econ.cost_source}): total {usd(econ.total_usd)}, per request "
                      f"{usd(econ.per_request_usd)}, per 1k tokens "
                      f"{usd(econ.per_1k_tokens_usd)}, per day {usd(econ.per_day_usd)}, "
                      f"monthly run rate {usd(econ.monthly_run_rate_usd)}")
        for key, by in econ.by.items():
            p = by.pareto
            console.print(f"by {key}: {by.count} distinct, {usd(by.per_item_usd)} "
                          f"each on average; top 20 % make {fmt((p.top_20pct_share or 0) * 100)}"
                          f" % of the cost; {p.n_for_80pct} make 80 %")
            t = Table(key, "cost", "share", "requests")
            for r in by.top[:5]:
                t.add_row(str(r.name), usd(r.cost_usd), f"{r.share:.1%}", f"{r.requests:,}")
            console.print(t)


def _argmax(v: list[float]) -> str:
    vals = [(x, i) for i, x in enumerate(v) if not math.isnan(x)]
    return str(max(vals)[1]) if vals else "–"


def forecast(console: Console, fc: ForecastResult, absolute: bool) -> None:
    bt = fc.backtest
    console.print(f"forecast: {len(fc.point)} steps of {fc.step_s:g} s, {fc.method}, "
                  f"80 % intervals; requests per second averaged over each step")
    console.print(f"  {spark(list(fc.point))}  mean {fmt(float(fc.point.mean()))} rps, "
                  f"max {fmt(float(fc.point.max()))} rps (upper band max "
                  f"{fmt(float(fc.upper.max()))})")
    if bt:
        t = Table("backtest", "WAPE", "note")
        t.add_row("margin forecast", f"{bt.wape_model:.3f}",
                  f"{bt.origins} origins x {bt.horizon_steps} steps")
        if bt.wape_naive_day is not None:
            t.add_row("same step yesterday", f"{bt.wape_naive_day:.3f}", "seasonal naive")
        if bt.wape_naive_week is not None:
            t.add_row("same step last week", f"{bt.wape_naive_week:.3f}", "seasonal naive")
        if bt.wape_naive_user_pick is not None:
            t.add_row("naive a user would pick", f"{bt.wape_naive_user_pick:.3f}",
                      "better of the two over the previous horizon")
        console.print(t)
        if bt.improvement_vs_user_pick is not None:
            console.print(f"  WAPE {bt.improvement_vs_user_pick:+.1%} better than the user's "
                          f"naive; interval coverage {bt.coverage:.1%} (target 80 %)")
    for n in fc.notes:
        console.print(f"[dim]note: {n}[/]")
    t = Table("time", "forecast", "lower", "upper")
    idx = sorted(set(range(0, len(fc.point), max(1, len(fc.point) // 8))) | {len(fc.point) - 1})
    for i in idx:
        t.add_row(when(fc.times[i], absolute), fmt(fc.point[i]), fmt(fc.lower[i]),
                  fmt(fc.upper[i]))
    console.print(t)


def backtest(console: Console, rep: BacktestReport) -> None:
    t = Table("horizon", "step", "origins", "margin WAPE", "same hour yesterday",
              "same hour last week", "best naive (hindsight)", "margin vs best",
              "80 % interval coverage")
    for r in rep.rows:
        g = r.gain_vs_best_naive
        t.add_row(f"{r.horizon_s / 3600:g} h", f"{r.step_s:g} s", str(r.origins),
                  f"{r.wape_model:.3f}", fmt(r.wape_naive_day), fmt(r.wape_naive_week),
                  r.best_naive or "–", "–" if g is None else f"{g:+.1%} better" if g >= 0
                  else f"{-g:.1%} worse", f"{r.coverage:.1%}")
    console.print(f"backtest of {rep.source}: WAPE = Σ|actual − forecast| / Σ actual over all "
                  "origins; the best naive is whichever seasonal naive did better over the test")
    console.print(t)
    for n in rep.notes:
        console.print(f"[dim]note: {n}[/]")


def capacity(console: Console, cap: CapacityPlan, absolute: bool) -> None:
    a = cap.assumptions
    console.print(f"replica: {fmt(a.replica_rps)} requests/s ({a.replica_rps_source}), "
                  f"{a.concurrency} at once ({a.concurrency_source}), service {a.service_s * 1000:g} ms; SLO P95 "
                  f"{a.slo_p95_ms:g} ms; ca² {fmt(a.ca2)}, cs² {fmt(a.cs2)}; "
                  f"peaks inside a step x{fmt(cap.peak_factor)}")
    if a.defaults:
        console.print(f"[yellow]{a.default_note()}[/]")
    console.print(f"replicas over the horizon: {spark(cap.replicas)}")
    t = Table("plan", "replicas", "replica-hours over the horizon")
    t.add_row("queueing (Erlang C + burstiness), forecast",
              f"peak {cap.peak_replicas}", fmt(cap.replica_hours))
    t.add_row("queueing, upper 80 % band", f"peak {cap.peak_replicas_upper}",
              fmt(cap.replica_hours_upper))
    s = cap.rule_of_thumb
    t.add_row("rule of thumb (static at max)", f"min {s.min}, max {s.max}",
              fmt(s.static_peak_replica_hours))
    console.print(t)
    console.print(f"[dim]rule of thumb: {s.formula}[/]")
    m = cap.mix
    console.print(f"cheapest mix: {m.reserved} reserved (always on), "
                  f"{fmt(m.on_demand_replica_h)} on-demand and {fmt(m.spot_replica_h)} "
                  f"spot replica-hours: {usd(m.cost_usd)} vs {usd(m.all_on_demand_usd)} "
                  f"all on demand ({m.saving_share:.1%} less)")


def policies(console: Console, rows: list[SimResult], recommended: SimResult | None) -> None:
    t = Table("policy", "parameters", "replica-h", "cost", "over SLO", "hours missing",
              "peak queue", "scale events", "meets SLO")
    for r in rows:
        mark = " ★" if recommended is not None and r is recommended else ""
        t.add_row(r.policy + mark, str(r.params.get("label", ""))[:48], fmt(r.replica_hours),
                  usd(r.cost_usd), f"{r.over_slo_share:.2%}", f"{r.hours_over_slo_share:.1%}",
                  fmt(r.peak_queue), str(r.scale_events), "yes" if r.meets_slo else "no")
    console.print(t)


def replica_assumptions(console: Console, a: Assumptions, startup_s: int, metric_lag_s: int
                        ) -> None:
    """The numbers a replay rests on; a default is named as one (measure yours: margin bench)."""
    console.print(f"assumed: one replica completes {fmt(a.replica_rps)} requests/s "
                  f"({a.replica_rps_source}), {a.concurrency} at once "
                  f"({a.concurrency_source}); SLO P95 "
                  f"{a.slo_p95_ms:g} ms; start-up {startup_s} s; metric lag {metric_lag_s} s")
    if a.defaults:
        console.print(f"[yellow]{a.default_note()}[/]")


def advice(console: Console, auto: AutoscalePlan) -> None:
    res = auto.search
    rec, adv = res.recommended, res.advice
    if rec is None or adv is None:
        return
    reach = res.reachable.replica_hours if res.reachable else float("nan")
    console.print(f"bounds: clairvoyant {fmt(res.clairvoyant.replica_hours)} replica-h (pods "
                  f"ready at once), reachable {fmt(reach)} (pods asked for start-up ahead); "
                  f"static for the peak {fmt(auto.static_replica_hours)}")
    console.print(f"recommended: {rec.policy} ({rec.params.get('label')}): {usd(rec.cost_usd)} "
                  f"for {auto.seconds / 86400:.1f} days, {fmt(rec.replica_hours / reach)}x the "
                  f"reachable bound, {auto.saving_vs_static():.1%} fewer replica-hours than "
                  "static")
    if adv.meets_slo:
        return
    console.print(f"[red]{adv.summary}[/]")
    for f in adv.fixes:
        console.print(f"[red]  would fix it: {f}[/]")


def roadmap(console: Console, plan: WhatIfPlan) -> None:
    rm, basis = plan.roadmap, plan.basis
    console.print(f"today: API {usd(rm.api_monthly_usd)}/month ({basis.api_bill}); "
                  f"infrastructure {usd(rm.infra_monthly_usd)}/month ({basis.infra_bill})")
    t = Table("#", "step", "saves / month", "one-off", "payback", "ROI 12 m", "bill after",
              "evidence / assumption")
    for i, s in enumerate(rm.steps, 1):
        t.add_row(str(i), s.name, usd(s.monthly_saving_usd), usd(s.one_off_usd),
                  f"{s.payback_months:.1f} mo" if s.payback_months else "–",
                  f"{s.roi_12m:.0%}" if s.roi_12m is not None else "–",
                  usd(s.api_after_usd + s.infra_after_usd), s.evidence)
    console.print(t)
    console.print(f"all steps: {usd(rm.total_saving_usd)}/month saved, "
                  f"{usd(rm.after_monthly_usd)}/month after (savings compound: each applies "
                  "to what the steps before it left)")
    for s in rm.skipped:
        console.print(f"[dim]skipped {s['name']}: {s['why']}[/]")
