"""Unit economics: the monthly calculator, growth, API versus self-hosted, spend by who.

The calculator, for one request:

    uncached = input_tokens / 1000 x input_usd_per_1k + output_tokens / 1000 x output_usd_per_1k
    per_request = (1 - cache_rate) x uncached + cache_rate x cached_usd
    monthly = per_request x daily_requests x 30
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl

from margin.plan.series import DAY_S
from margin.plan.traces import Trace

DAYS_PER_MONTH = 30
HOURS_PER_MONTH = 24 * DAYS_PER_MONTH


@dataclass(frozen=True)
class TokenPrices:
    """USD per 1,000 tokens. Defaults: GPT-4o list prices ($2.50 / $10 per million)."""
    input_usd_per_1k: float = 0.0025
    output_usd_per_1k: float = 0.01

    def request_usd(self, input_tokens: float, output_tokens: float) -> float:
        return input_tokens / 1000 * self.input_usd_per_1k + \
            output_tokens / 1000 * self.output_usd_per_1k


@dataclass(frozen=True)
class CostInputs:
    daily_requests: float
    input_tokens: float
    output_tokens: float
    prices: TokenPrices
    cache_rate: float = 0.0
    cached_usd: float = 0.0          # what a request answered from the cache costs
    days_per_month: int = DAYS_PER_MONTH


@dataclass(frozen=True)
class SelfHosted:
    """A self-hosted replica (GPU) and how much it really does."""
    gpu_hour_usd: float = 2.50
    gpu_tokens_per_s: float = 2500.0     # measured: input + output tokens per second per GPU
    utilisation: float = 0.6             # average share of that throughput you can plan on
    min_gpus: int = 1                    # always on (redundancy, cold start)


@dataclass(frozen=True)
class MonthCost:
    month: int
    requests: int
    cost_usd: float
    cumulative_usd: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Fleet:
    """A self-hosted fleet sized for a volume: GPUs, their hours and their monthly bill."""
    gpus: int
    monthly_cost_usd: float
    gpu_hours: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BreakEven:
    """API versus self-hosted; the ``*_current`` fields only exist when a break-even does."""
    api_per_request_usd: float
    self_hosted_marginal_per_request_usd: float
    assumptions: dict
    break_even_daily_requests: int | None
    verdict: str
    current_daily_requests: float | None = None
    self_hosted_at_current: Fleet | None = None
    api_at_current_monthly_usd: float | None = None

    def to_json(self) -> dict:
        out: dict = {"api_per_request_usd": self.api_per_request_usd,
                     "self_hosted_marginal_per_request_usd":
                         self.self_hosted_marginal_per_request_usd,
                     "assumptions": self.assumptions,
                     "break_even_daily_requests": self.break_even_daily_requests}
        if self.self_hosted_at_current is not None:
            out["current_daily_requests"] = self.current_daily_requests
            out["self_hosted_at_current"] = self.self_hosted_at_current.to_json()
            out["api_at_current_monthly_usd"] = self.api_at_current_monthly_usd
        out["verdict"] = self.verdict
        return out


@dataclass(frozen=True)
class CostProjection:
    """``margin cost project``: the bill for one request and one month, its growth, self-hosting."""
    inputs: CostInputs
    monthly_requests: float
    uncached_per_request_usd: float
    per_request_usd: float
    daily_cost_usd: float
    monthly_cost_usd: float
    cache_saving_monthly_usd: float
    monthly_growth: float = 0.0
    months: tuple[MonthCost, ...] = ()
    self_hosted: BreakEven | None = None

    @property
    def daily_requests(self) -> float:
        return self.inputs.daily_requests

    def assumptions(self) -> dict:
        ci = self.inputs
        return {"days_per_month": ci.days_per_month, "cache_rate": ci.cache_rate,
                "cached_request_usd": ci.cached_usd, "input_tokens": ci.input_tokens,
                "output_tokens": ci.output_tokens, **asdict(ci.prices)}

    def to_json(self) -> dict:
        out = {"daily_requests": self.daily_requests, "monthly_requests": self.monthly_requests,
               "uncached_per_request_usd": self.uncached_per_request_usd,
               "per_request_usd": self.per_request_usd, "daily_cost_usd": self.daily_cost_usd,
               "monthly_cost_usd": self.monthly_cost_usd,
               "cache_saving_monthly_usd": self.cache_saving_monthly_usd,
               "assumptions": self.assumptions()}
        if self.months or self.self_hosted is not None:
            out["growth"] = {"monthly_growth": self.monthly_growth,
                             "months": [m.to_json() for m in self.months]}
        if self.self_hosted is not None:
            out["self_hosted"] = self.self_hosted.to_json()
        return out


def project(ci: CostInputs) -> CostProjection:
    uncached = ci.prices.request_usd(ci.input_tokens, ci.output_tokens)
    per_request = (1 - ci.cache_rate) * uncached + ci.cache_rate * ci.cached_usd
    monthly_requests = ci.daily_requests * ci.days_per_month
    return CostProjection(
        inputs=ci, monthly_requests=monthly_requests,
        uncached_per_request_usd=round(uncached, 8), per_request_usd=round(per_request, 8),
        daily_cost_usd=round(per_request * ci.daily_requests, 2),
        monthly_cost_usd=round(per_request * monthly_requests, 2),
        cache_saving_monthly_usd=round((uncached - per_request) * monthly_requests, 2))


def growth(ci: CostInputs, monthly_growth: float, months: int) -> list[MonthCost]:
    """Month by month, traffic compounding by ``monthly_growth``."""
    base = project(ci).per_request_usd
    rows, cum = [], 0.0
    for m in range(1, months + 1):
        req = ci.daily_requests * ci.days_per_month * (1 + monthly_growth) ** (m - 1)
        cost = base * req
        cum += cost
        rows.append(MonthCost(month=m, requests=round(req), cost_usd=round(cost, 2),
                              cumulative_usd=round(cum, 2)))
    return rows


def self_hosted_monthly(daily_requests: float, tokens_per_request: float, sh: SelfHosted,
                        peak_to_mean: float = 1.0) -> Fleet:
    """GPUs to carry the traffic (sized on mean x peak_to_mean) and what they cost per month."""
    tokens_per_s = daily_requests * tokens_per_request / DAY_S * peak_to_mean
    gpus = max(sh.min_gpus, math.ceil(tokens_per_s / (sh.gpu_tokens_per_s * sh.utilisation)
                                      - 1e-9))
    return Fleet(gpus=gpus, monthly_cost_usd=round(gpus * HOURS_PER_MONTH * sh.gpu_hour_usd, 2),
                 gpu_hours=gpus * HOURS_PER_MONTH)


def break_even(ci: CostInputs, sh: SelfHosted, peak_to_mean: float = 1.0) -> BreakEven:
    """The daily volume above which self-hosting costs less than the API, if there is one."""
    api_per_request = project(ci).per_request_usd
    tpr = ci.input_tokens + ci.output_tokens
    # Self-hosted cost per request at full planned utilisation (the slope of the step function).
    marginal = sh.gpu_hour_usd / 3600 / (sh.gpu_tokens_per_s * sh.utilisation) * tpr * peak_to_mean
    assumptions = {**asdict(sh), "peak_to_mean": peak_to_mean, "tokens_per_request": tpr}
    if api_per_request <= 0 or marginal >= api_per_request:
        return BreakEven(api_per_request, round(marginal, 8), assumptions, None,
                         "the API is cheaper at every volume with these numbers")
    # Scan the step function: first volume where the GPU fleet undercuts the API bill.
    lo = sh.min_gpus * HOURS_PER_MONTH * sh.gpu_hour_usd / (api_per_request * ci.days_per_month)
    daily = lo
    for _ in range(10_000):
        hosted = self_hosted_monthly(daily, tpr, sh, peak_to_mean).monthly_cost_usd
        if hosted <= api_per_request * daily * ci.days_per_month:
            break
        daily *= 1.01
    cur = self_hosted_monthly(ci.daily_requests, tpr, sh, peak_to_mean)
    api_now = round(api_per_request * ci.daily_requests * ci.days_per_month, 2)
    verdict = ("self-hosting is cheaper now" if cur.monthly_cost_usd < api_now else
               f"the API is cheaper until about {round(daily):,} requests/day")
    return BreakEven(api_per_request, round(marginal, 8), assumptions, round(daily), verdict,
                     current_daily_requests=ci.daily_requests, self_hosted_at_current=cur,
                     api_at_current_monthly_usd=api_now)


# ------------------------------------------------------------------------------- from a trace

def request_costs(trace: Trace, prices: TokenPrices) -> pl.DataFrame | None:
    """One row per request with ``cost_usd``: the ledger's own, else tokens x prices."""
    if trace.kind != "requests":
        return None
    df = trace.events
    assert df is not None
    if trace.has("cost_usd"):
        return df.with_columns(pl.col("cost_usd").fill_null(0.0))
    if not (trace.has("input_tokens") or trace.has("output_tokens")):
        return None
    tin = pl.col("input_tokens").fill_null(0) if "input_tokens" in df.columns else pl.lit(0)
    tout = pl.col("output_tokens").fill_null(0) if "output_tokens" in df.columns else pl.lit(0)
    return df.with_columns(((tin * prices.input_usd_per_1k + tout * prices.output_usd_per_1k)
                            / 1000 * pl.col("n")).alias("cost_usd"))


@dataclass(frozen=True)
class Pareto:
    top_20pct_share: float | None     # share of the cost from the top 20 % (users, features ...)
    n_for_80pct: int | None           # how many of them make 80 % of it
    curve: list[list[float]]          # [share of them, cumulative share of cost], at most 50 points

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TopItem:
    name: str
    cost_usd: float
    requests: float
    share: float


@dataclass(frozen=True)
class CostBreakdown:
    """The cost by one attribute (``key``: user, feature, team or model)."""
    key: str
    count: int
    per_item_usd: float | None
    top: list[TopItem]
    pareto: Pareto

    def to_json(self) -> dict:
        return {"count": self.count, f"per_{self.key}_usd": self.per_item_usd,
                "top": [{self.key: t.name, "cost_usd": t.cost_usd, "requests": t.requests,
                         "share": t.share} for t in self.top],
                "pareto": self.pareto.to_json()}


@dataclass(frozen=True)
class DayCost:
    day: float                        # start of the day, trace clock (unix s or relative)
    cost_usd: float
    requests: float

    def to_json(self) -> dict:
        return asdict(self)


BREAKDOWN_KEYS = ("user", "feature", "team", "model")


@dataclass(frozen=True)
class UnitEconomics:
    cost_source: str
    total_usd: float
    requests: float
    per_request_usd: float | None
    per_1k_tokens_usd: float | None
    per_day_usd: float
    monthly_run_rate_usd: float
    observed_days: float
    by_day: list[DayCost]
    by: dict[str, CostBreakdown]      # only the attributes the trace has, in BREAKDOWN_KEYS order

    def to_json(self) -> dict:
        out = {"cost_source": self.cost_source, "total_usd": self.total_usd,
               "requests": self.requests, "per_request_usd": self.per_request_usd,
               "per_1k_tokens_usd": self.per_1k_tokens_usd, "per_day_usd": self.per_day_usd,
               "monthly_run_rate_usd": self.monthly_run_rate_usd,
               "observed_days": self.observed_days,
               "by_day": [d.to_json() for d in self.by_day]}
        for key, b in self.by.items():
            out[f"by_{key}"] = b.to_json()
        return out


def _pareto(by: pl.DataFrame) -> Pareto:
    costs = np.sort(by["cost_usd"].to_numpy())[::-1]
    total = costs.sum()
    if total <= 0:
        return Pareto(None, None, [])
    cum = np.cumsum(costs) / total
    n = len(costs)
    top = max(1, int(math.ceil(0.2 * n)))
    idx = np.unique(np.linspace(0, n - 1, min(n, 50)).astype(int))
    return Pareto(float(cum[top - 1]), int(np.searchsorted(cum, 0.8) + 1),
                  [[float((i + 1) / n), float(cum[i])] for i in idx])


def unit_economics(trace: Trace, prices: TokenPrices, top: int = 10) -> UnitEconomics | None:
    df = request_costs(trace, prices)
    if df is None:
        return None
    from_ledger = trace.has("cost_usd")
    total = float(df["cost_usd"].sum())
    n = float(df["n"].sum())
    tokens = sum(float(df[c].fill_null(0).sum()) for c in ("input_tokens", "output_tokens")
                 if c in df.columns)
    days = max((trace.end_s - trace.start_s - trace.gap_s) / DAY_S, 1e-9)
    day = df.with_columns((pl.col("ts") // DAY_S * DAY_S).alias("day")).group_by("day").agg(
        pl.col("cost_usd").sum(), pl.col("n").sum().alias("requests")).sort("day")
    by: dict[str, CostBreakdown] = {}
    for key in BREAKDOWN_KEYS:
        if trace.has(key):
            g = df.group_by(key).agg(pl.col("cost_usd").sum(), pl.col("n").sum().alias(
                "requests")).sort("cost_usd", descending=True)
            by[key] = CostBreakdown(
                key=key, count=g.height, per_item_usd=total / g.height if g.height else None,
                top=[TopItem(r[key], r["cost_usd"], r["requests"],
                             r["cost_usd"] / total if total else 0.0)
                     for r in g.head(top).to_dicts()],
                pareto=_pareto(g))
    return UnitEconomics(
        cost_source="ledger cost_usd" if from_ledger else
        f"tokens x prices (input ${prices.input_usd_per_1k}/1k, output "
        f"${prices.output_usd_per_1k}/1k)",
        total_usd=total, requests=n, per_request_usd=total / n if n else None,
        per_1k_tokens_usd=total / tokens * 1000 if tokens else None,
        per_day_usd=total / days, monthly_run_rate_usd=total / days * DAYS_PER_MONTH,
        observed_days=days,
        by_day=[DayCost(r["day"], r["cost_usd"], r["requests"]) for r in day.to_dicts()],
        by=by)
