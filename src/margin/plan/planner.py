"""Glue: from a trace and the options to each command's result (typed, with ``to_json()``)."""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from margin.errors import InputError
from margin.plan import manifests
from margin.plan import schedule_manifests as sm
from margin.plan.autoscale import Arrivals, arrivals_for_replay
from margin.plan.autoscale.hpa import HpaSpec
from margin.plan.autoscale.policies import RayServeSpec
from margin.plan.autoscale.predictive import PredictiveSpec, week_floor
from margin.plan.autoscale.search import SearchResult, search
from margin.plan.autoscale.sim import SimConfig
from margin.plan.capacity import (ReplicaModel, SloTarget, cheapest_mix, replicas_series,
                                  rule_of_thumb)
from margin.plan.costs import TokenPrices, unit_economics
from margin.plan.forecast import ForecastConfig, ForecastResult, backtest_series, forecast
from margin.plan.load import (LoadAnalysis, analyze_load, rate_series, service_cv2,
                              tokens_per_request)
from margin.plan.options import CapacityOptions, ReplicaChoice
from margin.plan.results import (Assumptions, BacktestReport, BacktestRow, CapacityPlan,
                                 RoadmapBasis, RuleOfThumb, WhatIfPlan)
from margin.plan.series import DAY_S, human_duration
from margin.plan.traces import Trace
from margin.plan.whatif import WhatIfAssumptions, roadmap

Progress = Callable[[str], None]


@dataclass
class Context:
    trace: Trace
    analysis: LoadAnalysis
    model: ReplicaModel
    choice: ReplicaChoice
    slo: SloTarget
    cs2: float
    cs2_source: str

    @property
    def ca2(self) -> float:
        return self.analysis.burstiness.ca2

    def assumptions(self) -> Assumptions:
        return Assumptions(replica_rps=self.model.replica_rps,
                           replica_rps_source=self.choice.replica_rps_source,
                           concurrency=self.model.concurrency,
                           concurrency_source=self.choice.concurrency_source, service_s=self.model.service_s,
                           slo_p95_ms=self.slo.latency_s * 1000,
                           utilisation_cap=self.slo.utilisation_cap, ca2=self.ca2,
                           ca2_source=self.analysis.burstiness.source, cs2=self.cs2,
                           cs2_source=self.cs2_source, defaults=self.choice.defaults())


def build_context(trace: Trace, opts: CapacityOptions) -> Context:
    analysis = analyze_load(trace)
    model, choice = opts.model(tokens_per_request(trace))
    slo = opts.slo()
    if slo.latency_s <= model.service_s:
        raise InputError(f"--slo-p95-ms {opts.slo_p95_ms:g} is not above the service time "
                         f"({model.service_s * 1000:g} ms = concurrency {model.concurrency} / "
                         f"{model.replica_rps:g} requests/s): lower --concurrency or raise the SLO")
    cs2, cs2_source = service_cv2(trace)
    return Context(trace, analysis, model, choice, slo, cs2, cs2_source)


# ------------------------------------------------------------------------------- forecast

def choose_resolution(trace: Trace, horizon_s: float | None, resolution_s: float | None
                      ) -> tuple[float, float, list[str]]:
    span = trace.end_s - trace.start_s
    notes = []
    res = resolution_s or (3600.0 if span >= 4 * DAY_S else 60.0)
    if resolution_s is None and res == 60.0:
        notes.append(f"the trace spans {span / 3600:.1f} h: forecasting per minute instead of "
                     "per hour")
    res = max(res, trace.step_s)
    if horizon_s is None:
        horizon_s = min(7 * DAY_S, max(res, math.floor(span / 4 / res) * res))
        notes.append(f"horizon {human_duration(horizon_s)} (a quarter of the trace, at most a "
                     "week)")
    elif horizon_s > span:
        notes.append(f"the horizon ({horizon_s / 3600:g} h) is longer than the trace "
                     f"({span / 3600:.1f} h): treat the far end as a guess")
    return res, horizon_s, notes


def run_forecast(trace: Trace, horizon_s: float | None = None, resolution_s: float | None = None,
                 growth_monthly: float = 0.0, backtest: bool = True) -> ForecastResult:
    res, horizon, notes = choose_resolution(trace, horizon_s, resolution_s)
    series = rate_series(trace, res)
    result = forecast(series, ForecastConfig(horizon_s=horizon, growth_monthly=growth_monthly),
                      run_backtest=backtest)
    result.notes = notes + result.notes
    return result


def run_backtest(trace: Trace, horizons_s: list[float], resolution_s: float | None = None
                 ) -> BacktestReport:
    """Rolling-origin backtests at each horizon against the hindsight-best seasonal naive."""
    rows, notes = [], []
    for h in horizons_s:
        res, _, n = choose_resolution(trace, h, resolution_s)
        bt = backtest_series(rate_series(trace, res), ForecastConfig(horizon_s=h))
        if bt is None:
            notes.append(f"{h / 3600:g} h: not enough history for a backtest of this horizon")
            continue
        rows.append(BacktestRow(horizon_s=h, step_s=res, origins=bt.origins,
                                wape_model=bt.wape_model, wape_naive_day=bt.wape_naive_day,
                                wape_naive_week=bt.wape_naive_week, coverage=bt.coverage))
        notes += [x for x in n if x not in notes]
    return BacktestReport(trace.source, rows, notes)


# ------------------------------------------------------------------------------- capacity

def peak_factor(trace: Trace, period_s: float) -> tuple[float, str]:
    """How far the busiest minute of a period rises above the period's mean (median over periods)."""
    fine = max(60.0, trace.step_s)
    if fine >= period_s:
        return 1.0, "no finer data than the planning step: sized on the step's mean"
    per = int(round(period_s / fine))
    v = rate_series(trace, fine).values
    n = len(v) // per * per
    blocks = v[:n].reshape(-1, per)
    ok = ~np.isnan(blocks).any(axis=1)
    ok[ok] = blocks[ok].mean(axis=1) > 0
    if not ok.any():
        return 1.0, "too little data to measure peaks inside a step"
    ratio = np.percentile(blocks[ok], 95, axis=1) / blocks[ok].mean(axis=1)
    return float(np.median(ratio)), (f"median over {int(ok.sum())} steps of the P95 "
                                     f"{fine:g}-s rate / the step's mean")


def capacity_plan(ctx: Context, opts: CapacityOptions, fc: ForecastResult) -> CapacityPlan:
    factor, factor_src = peak_factor(ctx.trace, fc.step_s)
    point = fc.point * factor
    upper = fc.upper * factor
    r_point = replicas_series(point, ctx.model, ctx.slo, ctx.ca2, ctx.cs2)
    r_upper = replicas_series(upper, ctx.model, ctx.slo, ctx.ca2, ctx.cs2)
    r_point = np.maximum(r_point, opts.min_replicas)
    r_upper = np.maximum(r_upper, opts.min_replicas)
    minute = ctx.analysis.rps_at(60.0)
    g_end = (1 + opts.growth_monthly) ** (len(fc.point) * fc.step_s / (30 * DAY_S))
    lo, hi = rule_of_thumb(minute.mean * g_end, minute.p99 * g_end, ctx.model.replica_rps)
    step_h = fc.step_s / 3600
    return CapacityPlan(
        step_s=fc.step_s, peak_factor=factor, peak_factor_source=factor_src,
        times=fc.times.tolist(), design_rps=point.tolist(), design_rps_upper=upper.tolist(),
        replicas=r_point.tolist(), replicas_upper=r_upper.tolist(),
        peak_replicas=int(np.nanmax(r_point)), peak_replicas_upper=int(np.nanmax(r_upper)),
        replica_hours=float(np.nansum(r_point) * step_h),
        replica_hours_upper=float(np.nansum(r_upper) * step_h),
        rule_of_thumb=RuleOfThumb(
            min=lo, max=hi,
            basis=f"{minute.resolution_s:g}-s mean {minute.mean:.3g} rps and P99 "
                  f"{minute.p99:.3g} rps of the history, x{g_end:.3f} growth by the horizon's end",
            static_peak_replica_hours=hi * len(fc.point) * step_h),
        mix=cheapest_mix(r_point, step_h, opts.prices), assumptions=ctx.assumptions(),
        growth_monthly=opts.growth_monthly, prices=opts.prices)


# ------------------------------------------------------------------------------- autoscale

def sim_config(ctx: Context, opts: CapacityOptions) -> SimConfig:
    return SimConfig(model=ctx.model, slo=ctx.slo, startup_s=opts.startup_s,
                     metric_lag_s=opts.metric_lag_s, ca2=ctx.ca2, cs2=ctx.cs2,
                     usd_per_replica_h=opts.prices.on_demand_usd_per_h)


@dataclass
class AutoscalePlan:
    search: SearchResult
    start_s: float
    seconds: int
    static_peak_replicas: int
    hpa: dict
    keda: dict
    ray: dict
    problems: dict[str, list[str]]
    headers: dict[str, str]
    week_floor: list[int] | None = None       # predictive floor per hour of week, Monday 00:00 first
    week_clock: str = ""                      # what the hours of week are in
    keda_predictive: dict | None = None
    hpa_schedule: list[dict] | None = None
    assumptions: Assumptions | None = None    # the replica numbers the replay rests on

    @property
    def static_replica_hours(self) -> float:
        return self.static_peak_replicas * self.seconds / 3600

    def saving_vs_static(self) -> float:
        """Replica-hours the recommendation saves against static peak provisioning (0 when the
        recommendation is static; filled even when nothing meets the SLO)."""
        rec = self.search.recommended
        if rec is None or self.static_replica_hours <= 0:
            return 0.0
        return 1 - rec.replica_hours / self.static_replica_hours

    def files(self) -> dict[str, str]:
        """The manifests as files: name -> YAML text, each headed by what the replay said."""
        out = {"hpa.yaml": manifests.to_yaml(self.hpa, self.headers["hpa"]),
               "keda.yaml": manifests.to_yaml(self.keda, self.headers["keda"]),
               "ray-serve.yaml": manifests.to_yaml(self.ray, self.headers["ray"])}
        if self.keda_predictive is not None and self.hpa_schedule is not None:
            out["keda-predictive.yaml"] = manifests.to_yaml(self.keda_predictive,
                                                            self.headers["keda-predictive"])
            out["hpa-predictive.yaml"] = manifests.to_yaml_all(self.hpa_schedule,
                                                               self.headers["hpa-schedule"])
        return out

    def write(self, out: Path) -> list[str]:
        out.mkdir(parents=True, exist_ok=True)
        files = self.files()
        for name, text in files.items():
            (out / name).write_text(text)
        return list(files)

    def to_json(self) -> dict:
        return {"window_start_s": self.start_s, "seconds": self.seconds,
                "static_peak_replicas": self.static_peak_replicas,
                "static_replica_hours": self.static_replica_hours,
                "saving_vs_static": self.saving_vs_static(), **self.search.to_json(),
                "predictive_week": {"replicas_by_hour_of_week": self.week_floor,
                                    "clock": self.week_clock} if self.week_floor else None,
                "manifest_problems": self.problems,
                "assumptions": self.assumptions.to_json() if self.assumptions else None}


def autoscale_plan(ctx: Context, opts: CapacityOptions, quick: bool = False,
                   progress: Progress | None = None, keda_schema: str | None = None
                   ) -> AutoscalePlan:
    arr = arrivals_for_replay(ctx.trace, opts.sim_days)
    cfg = sim_config(ctx, opts)
    res = search(arr.per_second, cfg, arr.valid, opts.min_replicas, opts.max_replicas,
                 quick=quick, progress=progress, history=arr.before)
    static = int(res.static.max_replicas) if res.static else int(res.clairvoyant.max_replicas)
    hpa_spec = _pick_hpa(res)
    ray_spec = res.best_specs.get("ray-serve") or RayServeSpec(min_replicas=opts.min_replicas,
                                                               max_replicas=res.max_replicas)
    inflight = res.best_specs.get("hpa-inflight")
    inflight_target = inflight.target if isinstance(inflight, HpaSpec) else ctx.model.concurrency * 0.6
    keda_spec = inflight if isinstance(inflight, HpaSpec) else hpa_spec
    hpa_doc = manifests.hpa_manifest(hpa_spec)
    keda_doc = manifests.keda_manifest(inflight_target, inflight_target / ctx.model.service_s,
                                       keda_spec)
    ray_doc = manifests.ray_serve_config(ray_spec, ctx.model.concurrency)  # type: ignore[arg-type]
    problems = {"hpa": manifests.validate_hpa(hpa_doc),
                "keda": manifests.validate_keda(keda_doc, keda_schema),
                "ray": manifests.ray_problems(ray_doc)}
    plan = AutoscalePlan(res, arr.start_s, len(arr.per_second), static, hpa_doc, keda_doc,
                         ray_doc, problems, _headers(res, hpa_spec, keda_spec, ray_spec),
                         assumptions=ctx.assumptions())
    pred = res.best_specs.get("predictive")
    if isinstance(pred, PredictiveSpec):
        _add_predictive(plan, ctx, cfg, arr, pred, keda_schema)
    return plan


def _add_predictive(plan: AutoscalePlan, ctx: Context, cfg: SimConfig, arr: Arrivals,
                    spec: PredictiveSpec, keda_schema: str | None) -> None:
    """Next week's forecast floor, from the whole trace, as KEDA cron triggers and HPA CronJobs."""
    full = np.concatenate([arr.before, np.where(arr.valid, arr.per_second, np.nan)])
    end_s = arr.start_s + len(arr.per_second)
    week = sm.by_hour_of_week(week_floor(full, len(full), cfg, spec), end_s,
                              ctx.trace.absolute_time)
    bl = sm.blocks(week, spec.reactive.min_replicas)
    r = spec.reactive
    plan.week_floor = [int(x) for x in week]
    plan.week_clock = "UTC" if ctx.trace.absolute_time else \
        "trace clock: second 0 of the trace taken as Monday 00:00 UTC"
    # An in-flight target per pod is also a request rate per pod by Little's law (/ service
    # time); a request-rate target is one already.
    rps = r.target if r.metric == "rate" else r.target / ctx.model.service_s
    inflight = r.target * ctx.model.service_s if r.metric == "rate" else r.target
    plan.keda_predictive = sm.keda_predictive(bl, r, inflight, rps, cfg.startup_s)
    plan.hpa_schedule = sm.hpa_schedule(bl, r, cfg.startup_s)
    plan.problems["keda-predictive"] = sm.validate_keda_predictive(plan.keda_predictive,
                                                                   keda_schema)
    plan.problems["hpa-schedule"] = sm.validate_hpa_schedule(plan.hpa_schedule)
    rec = plan.search.best_by_family.get("predictive")
    head = "# generated by margin plan from a replayed trace; review before applying\n"
    line = (f"# replayed: {rec.params.get('label')}: {rec.replica_hours:,.0f} replica-hours, "
            f"{rec.over_slo_share:.2%} of requests over the SLO; "
            f"{'meets' if rec.meets_slo else 'DOES NOT meet'} the SLO\n") if rec else ""
    clock = f"# the weekly floor is next week's forecast per hour; cron times in {plan.week_clock}\n"
    plan.headers["keda-predictive"] = head + line + clock + \
        "# KEDA scales to the largest of the cron floors and the metric trigger\n"
    plan.headers["hpa-schedule"] = head + line + clock + \
        "# the CronJobs set the HPA's minReplicas ahead of each block (kubectl image, RBAC below)\n"


def _headers(res: SearchResult, hpa_spec: HpaSpec, keda_spec: HpaSpec, ray_spec: object
             ) -> dict[str, str]:
    """A comment on top of each manifest: what the replay said about it."""
    def line(fam: str, spec: object) -> str:
        r = res.best_by_family.get(fam) if res.best_specs.get(fam) is spec else None
        if r is None:
            return "# not replayed"
        verdict = "meets the SLO" if r.meets_slo else "DOES NOT meet the SLO (best found)"
        return (f"# replayed: {r.params.get('label')}: {r.replica_hours:,.0f} replica-hours, "
                f"{r.over_slo_share:.2%} of requests over the SLO, {r.hours_over_slo_share:.1%} "
                f"of hours missing; {verdict}")
    head = "# generated by margin plan from a replayed trace; review before applying\n"
    hpa_fam = "hpa-cpu" if hpa_spec.metric == "cpu" else "hpa-inflight"
    keda_fam = "hpa-inflight" if keda_spec.metric == "inflight" else hpa_fam
    return {"hpa": head + line(hpa_fam, hpa_spec) + "\n",
            "keda": head + line(keda_fam, keda_spec) + "\n# the in-flight target is the "
            "replayed HPA's; KEDA scales on whichever trigger asks for more\n",
            "ray": head + line("ray-serve", ray_spec) + "\n# set import_path to your Serve "
            "application\n"}


def _pick_hpa(res: SearchResult) -> HpaSpec:
    fams = [f for f in ("hpa-cpu", "hpa-inflight") if f in res.best_by_family]
    best = min(fams, key=lambda f: (not res.best_by_family[f].meets_slo,
                                    res.best_by_family[f].cost_usd))
    spec = res.best_specs[best]
    assert isinstance(spec, HpaSpec)
    return spec


# ------------------------------------------------------------------------------- what-if

def whatif_plan(ctx: Context, opts: CapacityOptions, prices: TokenPrices,
                assumptions: WhatIfAssumptions, auto: AutoscalePlan | None,
                cap: CapacityPlan | None, serving: str = "auto") -> WhatIfPlan:
    """``serving``: "api" (tokens bought), "self-hosted" (replicas run), "both", or "auto":
    API when the trace has token counts or costs, self-hosted otherwise."""
    econ = unit_economics(ctx.trace, prices)
    if serving == "auto":
        serving = "api" if econ else "self-hosted"
    api = econ.monthly_run_rate_usd if econ and serving in ("api", "both") else 0.0
    peak = auto.static_peak_replicas if auto else (cap.rule_of_thumb.max if cap else 0)
    infra = peak * 720 * opts.prices.on_demand_usd_per_h if serving in ("self-hosted", "both") \
        else 0.0
    a = assumptions
    if auto is not None and a.autoscale_saving is None:
        rec = auto.search.recommended
        # A saving that misses the SLO is not a saving the roadmap can promise.
        a = replace(a, autoscale_saving=auto.saving_vs_static()
                    if rec is not None and rec.meets_slo else 0.0)
    if cap is not None and a.mix_saving is None:
        a = replace(a, mix_saving=cap.mix.saving_share)
    if econ and a.input_cost_share is None and ctx.trace.has("input_tokens"):
        df = ctx.trace.events
        assert df is not None
        tin = float(df["input_tokens"].fill_null(0).sum()) * prices.input_usd_per_1k
        tout = float(df["output_tokens"].fill_null(0).sum()) * prices.output_usd_per_1k \
            if "output_tokens" in df.columns else 0.0
        if tin + tout > 0:
            a = replace(a, input_cost_share=tin / (tin + tout))
    rm = roadmap(api, infra, ctx.trace, a)
    observed_h = econ.observed_days * 24 if econ else 0.0
    basis = RoadmapBasis(
        serving=serving,
        api_bill=(f"{econ.cost_source}, monthly run rate from {observed_h:,.1f} h observed"
                  if econ else "no tokens or costs in this trace")
        if api else f"no API bill (serving: {serving})",
        infra_bill=f"static provisioning for the peak: {peak} replicas x 720 h x "
                   f"${opts.prices.on_demand_usd_per_h}/h on demand"
        if infra else f"no self-hosted replicas (serving: {serving})")
    return WhatIfPlan(rm, basis)
