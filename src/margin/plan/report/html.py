"""The report page: one self-contained HTML file (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import TYPE_CHECKING

import numpy as np

from margin.plan.report import svg
from margin.plan.series import DAY_S
from margin.plan.series import human_duration as duration

if TYPE_CHECKING:
    from margin.plan.autoscale.sim import SimResult
    from margin.plan.planner import AutoscalePlan
    from margin.plan.report.build import PlanReport

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:960px;margin:2em auto;
color:#111827;padding:0 1em;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #e5e7eb}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}
td,th{border-bottom:1px solid #e5e7eb;padding:3px 8px;text-align:right}
th{background:#f9fafb}td:first-child,th:first-child{text-align:left}
.note{color:#6b7280;font-size:.88em}.caption{color:#374151;font-size:.85em;margin-top:0}.ok{color:#15803d}.bad{color:#b91c1c}
pre{background:#f3f4f6;padding:.8em;overflow:auto;font-size:.8em}
svg{width:100%;height:auto;margin:.4em 0}
"""


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
    return escape(str(x))


def _usd(x) -> str:
    if x is None:
        return "–"
    return f"${x:.3g}" if x != 0 and abs(x) < 0.01 else f"${x:,.2f}"


def _table(head: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def _time_fmt(absolute: bool, span_s: float):  # noqa: ANN202
    """Axis labels at the grain the trace has: minutes for an hour, hours for a day, days after."""
    def f(ts: float) -> str:
        if absolute:
            fmt = "%H:%M" if span_s <= 2 * DAY_S else "%m-%d %H:%M"
            return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime(fmt)
        if span_s <= 3 * 3600:
            return f"{ts / 60:.0f} min"
        if span_s <= 2 * DAY_S:
            return f"{ts / 3600:.1f} h"
        return f"d{int(ts // 86400)} {int(ts % 86400 // 3600):02d}h"
    return f


def _caption(text: str) -> str:
    return f"<p class=caption>{escape(text)}</p>"


def render_html(rep: PlanReport, history: tuple[np.ndarray, np.ndarray],
                series: dict[str, np.ndarray], demand_per_min: np.ndarray) -> str:
    tf = _time_fmt(rep.absolute_time, rep.load.span_s)
    load, cap, fc = rep.load, rep.capacity, rep.forecast
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>margin plan: "
             f"{escape(str(rep.source))}</title><style>{CSS}</style><body>",
             f"<h1>Capacity and cost plan</h1><p>Trace <code>{escape(str(rep.source))}</code> "
             f"({escape(rep.format)}), {load.requests:,.0f} requests over "
             f"{load.span_s / 3600:,.1f} h ({load.observed_s / 3600:,.1f} h observed). "
             f"Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
             "<code>margin plan report</code>. Every number below sits next to its assumptions; "
             "<code>plan.json</code> has them all.</p>"]
    # --- load
    parts.append("<h2>Load</h2>")
    parts.append(_table(["resolution", "mean rps", "P50", "P95", "P99", "max", "peak/mean"],
                        [[f"{r.resolution_s:g} s", _f(r.mean), _f(r.p50), _f(r.p95),
                          _f(r.p99), _f(r.max), _f(r.peak_to_mean)] for r in load.rps]))
    b = load.burstiness
    parts.append(f"<p>Burstiness: inter-arrival CV {_f(b.cv_interarrival)}, dispersion of "
                 f"1-s counts {_f(b.dispersion_1s)}; the queueing model uses ca² = "
                 f"{_f(b.ca2)} <span class=note>({escape(b.source)})</span>.</p>")
    prof = load.profile
    if load.span_s >= DAY_S:
        lines = [svg.Line("mean rps by hour of day", list(range(24)), prof.daily)]
        parts.append(svg.line_chart(lines, "Daily profile", "requests/s",
                                    lambda x: f"{x:.0f}h"))
        parts.append(_caption("Mean requests per second in each hour of the day: the daily "
                              "cycle an autoscaler or a schedule has to follow."))
    else:
        parts.append(f"<p class=note>The trace covers {duration(load.span_s)}: too short for a "
                     "daily or weekly profile.</p>")
    if prof.weekly:
        parts.append(svg.line_chart([svg.Line(f"mean rps by hour of week (0 = "
                                              f"{prof.weekly_start})", list(range(168)),
                                              prof.weekly)], "Weekly profile", "requests/s",
                                    lambda x: f"day {x / 24:.0f}"))
        parts.append(_caption("Mean requests per second in each hour of the week: weekday "
                              "against weekend, and which days peak highest."))
    for n in load.notes:
        parts.append(f"<p class=note>{escape(n)}</p>")
    # --- forecast
    parts.append(f"<h2>Forecast</h2><p>{len(fc.point)} steps of {fc.step_s:g} s with 80 % "
                 f"intervals ({escape(fc.method)}), in requests per second averaged over each "
                 "step.</p>")
    parts.append(svg.line_chart(
        [svg.Line("history", history[0], history[1], "#4b5563"),
         svg.Line("forecast", fc.times, fc.point, "#2563eb")],
        "Load with forecast", "requests/s", tf, band=(fc.times, fc.lower, fc.upper)))
    parts.append(_caption("Recent traffic (grey) and the forecast (blue) with its 80 % band: "
                          "actual traffic should fall inside the band four times in five."))
    bt = fc.backtest
    if bt:
        parts.append(_table(["backtest on the trace's own past", "WAPE"], [
            ["margin forecast", _f(bt.wape_model)],
            ["same step yesterday (seasonal naive)", _f(bt.wape_naive_day)],
            ["same step last week (seasonal naive)", _f(bt.wape_naive_week)],
            ["the naive a user would pick (better over the previous horizon)",
             _f(bt.wape_naive_user_pick)],
        ]))
        apart = "one day apart" if bt.wape_naive_week is not None or \
            fc.method.endswith(("weekly", "daily")) else "half a horizon apart"
        parts.append(f"<p>{bt.origins} forecast origins {apart}, each {bt.horizon_steps}"
                     f" steps ahead. 80 % intervals covered <b>{bt.coverage:.1%}</b> of the "
                     "actual values.</p>")
    for n in fc.notes:
        parts.append(f"<p class=note>{escape(n)}</p>")
    # --- capacity
    a = cap.assumptions
    s = cap.rule_of_thumb
    parts.append("<h2>Capacity for the SLO</h2>")
    parts.append(f"<p>One replica completes {_f(a.replica_rps)} requests/s "
                 f"<span class=note>({escape(a.replica_rps_source)})</span>, {a.concurrency} "
                 f"at a time <span class=note>({escape(a.concurrency_source)})</span> "
                 f"({a.service_s * 1000:g} ms each); SLO: 95 % under "
                 f"{a.slo_p95_ms:g} ms; utilisation at most {a.utilisation_cap:.0%}. "
                 f"Erlang C with the Allen–Cunneen factor (ca² {_f(a.ca2)}, cs² {_f(a.cs2)})"
                 f"; each step sized on its forecast x{_f(cap.peak_factor)} "
                 f"<span class=note>({escape(cap.peak_factor_source)})</span>.</p>")
    if a.defaults:
        parts.append(f"<p class=note><b>{escape(a.default_note())}</b>.</p>")
    t = np.asarray(cap.times, float)
    parts.append(svg.line_chart([
        svg.Line("queueing: forecast", t, cap.replicas, "#2563eb"),
        svg.Line("queueing: upper band", t, cap.replicas_upper, "#93c5fd", dash=True),
        svg.Line("rule of thumb max", t, [s.max] * len(t), "#dc2626", dash=True),
        svg.Line("rule of thumb min", t, [s.min] * len(t), "#f59e0b", dash=True)],
        "Replicas over the horizon", "replicas", tf))
    parts.append(_caption("Replicas the queueing model needs each step for the SLO on the "
                          "forecast and on its upper band, against the rule of thumb's fixed "
                          "min and max: the gap is what sizing by the hour saves."))
    m = cap.mix
    parts.append(_table(["plan", "replicas", "replica-hours"], [
        ["queueing, forecast", f"peak {cap.peak_replicas}", _f(cap.replica_hours)],
        ["queueing, upper band", f"peak {cap.peak_replicas_upper}", _f(cap.replica_hours_upper)],
        [f"rule of thumb ({escape(s.basis)})", f"{s.min}–{s.max}",
         _f(s.static_peak_replica_hours)]]))
    parts.append(f"<p class=note>Rule of thumb: {escape(s.formula)}.</p>")
    parts.append(f"<p>Cheapest mix at ${cap.prices.reserved_usd_per_h:g}"
                 f"/h reserved, on-demand and spot: <b>{m.reserved}</b> reserved, "
                 f"{_f(m.on_demand_replica_h)} on-demand and {_f(m.spot_replica_h)} spot "
                 f"replica-hours, {_usd(m.cost_usd)} vs {_usd(m.all_on_demand_usd)} all on "
                 f"demand ({m.saving_share:.1%} less).</p>")
    # --- autoscaling
    parts.append(_autoscale_section(rep.autoscale, series, demand_per_min, tf))
    # --- costs
    parts.append(_costs_section(rep))
    # --- roadmap
    rm, basis = rep.whatif.roadmap, rep.whatif.basis
    parts.append("<h2>Roadmap</h2>")
    steps = [(st.name, st.monthly_saving_usd) for st in rm.steps]
    start = rm.api_monthly_usd + rm.infra_monthly_usd
    parts.append(svg.waterfall("today", start, steps, "after", "Roadmap waterfall ($/month)",
                               lambda v: f"${v:,.0f}"))
    parts.append(_caption("The monthly bill today, each step's saving in payback order, and "
                          "what is left: savings compound, so later bars are cut from less."))
    parts.append(_table(["#", "step", "saves/month", "one-off", "payback", "ROI 12 m",
                         "evidence / assumption"],
                        [[str(i), escape(st.name), _usd(st.monthly_saving_usd),
                          _usd(st.one_off_usd),
                          f"{st.payback_months:.1f} mo" if st.payback_months else "–",
                          f"{st.roi_12m:.0%}" if st.roi_12m is not None else "–",
                          escape(st.evidence)] for i, st in enumerate(rm.steps, 1)]))
    parts.append(f"<p class=note>Bills today: {escape(basis.api_bill)}; "
                 f"{escape(basis.infra_bill)}. Savings compound: each step applies to "
                 "what the steps before it left.</p>")
    for sk in rm.skipped:
        parts.append(f"<p class=note>Skipped {escape(sk['name'])}: {escape(sk['why'])}</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _autoscale_section(auto: AutoscalePlan, series: dict, demand: np.ndarray, tf) -> str:
    res = auto.search
    start = auto.start_s
    out = ["<h2>Autoscaling, replayed</h2>"]
    out.append(f"<p>The last {duration(auto.seconds)} replayed second by second through each "
               "policy "
               "(pod start-up delay and metric lag included). The clairvoyant line knows the "
               "future and starts pods instantly: no policy can be cheaper while meeting the SLO "
               "every hour. The reachable line knows the future too but asks for each pod its "
               "start-up time ahead: what perfect foresight buys once start-up is paid. Static "
               "provisioning for the peak is always a candidate, so the advice never costs more "
               "than not autoscaling.</p>")
    lines = [svg.Line("demand (busy replicas)", start + 60 * np.arange(len(demand)), demand,
                      "#9ca3af", fill=True)]
    for i, (name, rpm) in enumerate(series.items()):
        lines.append(svg.Line(name, start + 60 * np.arange(len(rpm)), rpm,
                              svg.PALETTE[i % len(svg.PALETTE)],
                              width=2.2 if name.startswith(("recommended", "clairvoyant")) else 1.0,
                              dash=not name.startswith(("recommended", "clairvoyant"))))
    out.append(svg.line_chart(lines, "Replicas per policy against demand", "replicas", tf))
    out.append(_caption("Replicas each policy ran minute by minute, over the replicas the "
                        "traffic kept busy (grey): area above grey is paid headroom, grey above "
                        "a line is where requests queued."))
    rec = res.recommended
    bounds = [r for r in (res.clairvoyant, res.reachable) if r is not None]
    rows = [_policy_row(r, r is rec) for r in [*bounds, *res.results]]
    out.append(_table(["policy", "parameters", "replica-h", "cost", "requests over SLO",
                       "hours missing", "peak queue", "scale events", "meets SLO"], rows))
    adv = res.advice
    if rec and adv and adv.meets_slo:
        out.append(f"<p>Recommended: <b>{escape(rec.policy)}</b> "
                   f"({escape(str(rec.params.get('label')))}), the cheapest policy meeting "
                   f"the SLO in at least 99 % of hours; {auto.saving_vs_static():.0%} fewer "
                   "replica-hours than static provisioning for the peak.</p>")
    elif rec and adv:
        out.append(f"<p class=bad><b>{escape(adv.summary)}.</b> Shown as recommended: the "
                   "closest. What would fix it:</p><ul>" +
                   "".join(f"<li>{escape(f)}</li>" for f in adv.fixes) + "</ul>")
    if auto.week_floor:
        out.append(svg.line_chart(
            [svg.Line("replicas asked for by the forecast floor", list(range(168)),
                      auto.week_floor, "#16a34a")],
            f"Next week's predictive floor by hour of week ({auto.week_clock})", "replicas",
            lambda x: ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][int(x // 24) % 7]))
        out.append(_caption("The minimum replicas the cron schedule keeps ready each hour "
                            "next week; the metric trigger adds more when traffic runs above "
                            "the forecast."))
    keys = {"hpa.yaml": "hpa", "keda.yaml": "keda", "ray-serve.yaml": "ray",
            "keda-predictive.yaml": "keda-predictive", "hpa-predictive.yaml": "hpa-schedule"}
    for fname, text in auto.files().items():
        probs = auto.problems.get(keys[fname], [])
        status = "valid" if not [p for p in probs if not p.startswith("(")] else "; ".join(probs)
        out.append(f"<p><b>{fname}</b> ({escape(status)})</p><pre>{escape(text)}</pre>")
    return "".join(out)


def _policy_row(r: SimResult, recommended: bool) -> list[str]:
    return [escape(r.policy) + (" ★" if recommended else ""),
            escape(str(r.params.get("label", ""))), _f(r.replica_hours), _usd(r.cost_usd),
            f"{r.over_slo_share:.2%}", f"{r.hours_over_slo_share:.1%}", _f(r.peak_queue),
            str(r.scale_events),
            "<span class=ok>yes</span>" if r.meets_slo else "<span class=bad>no</span>"]


def _day_label(day_s: float) -> str:
    if day_s > 1e8:
        return dt.datetime.fromtimestamp(day_s, dt.timezone.utc).strftime("%Y-%m-%d")
    return f"day {int(day_s // 86400)}"


def _costs_section(rep: PlanReport) -> str:
    econ = rep.costs
    out = ["<h2>Costs</h2>"]
    if not econ:
        out.append("<p class=note>This trace has neither costs nor token counts: no API cost "
                   "breakdown. The infrastructure bill is in the roadmap below.</p>")
        return "".join(out)
    out.append(f"<p>{escape(econ.cost_source)}: {_usd(econ.total_usd)} over "
               f"{econ.observed_days:.2f} days; {_usd(econ.per_request_usd)} per request, "
               f"{_usd(econ.per_1k_tokens_usd)} per 1k tokens, monthly run rate "
               f"{_usd(econ.monthly_run_rate_usd)}.</p>")
    shown = False
    for key in ("feature", "model", "team", "user"):
        by = econ.by.get(key)
        if not by:
            continue
        top = by.top[:10]
        out.append(svg.bar_chart([str(r.name) for r in top], [r.cost_usd for r in top],
                                 f"Cost by {key}", lambda v: f"${v:,.2f}"))
        out.append(_caption(f"The {len(top)} costliest {key}s: where a saving per {key} "
                            "pays most."))
        p = by.pareto
        if p.curve and not shown:
            xs = [c[0] for c in p.curve]
            ys = [c[1] for c in p.curve]
            out.append(svg.line_chart([svg.Line(f"cumulative share of cost by {key}", xs, ys)],
                                      f"Pareto curve by {key}", "share of cost",
                                      lambda x: f"{x:.0%}"))
            out.append(_caption(f"Share of the cost (up) from the costliest share of {key}s "
                                "(across): a steep start means a few make most of the bill."))
            out.append(f"<p>The top 20 % of {key}s make {p.top_20pct_share:.0%} of the cost; "
                       f"{p.n_for_80pct} of {by.count} make 80 %.</p>")
            shown = True
    if not shown:
        days = econ.by_day
        out.append(svg.bar_chart([_day_label(d.day) for d in days[:14]],
                                 [d.cost_usd for d in days[:14]], "Cost by day",
                                 lambda v: f"${v:,.2f}"))
        out.append(_caption("Cost per day of the trace: trend and weekday effects in spend."))
        out.append("<p class=note>No user or feature column in this trace: no Pareto curve.</p>")
    return "".join(out)
