"""Unit economics: the seed's monthly calculator, growth, API versus self-hosted, spend by who.

The seed's calculator, for one request:

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


def project(ci: CostInputs) -> dict:
    uncached = ci.prices.request_usd(ci.input_tokens, ci.output_tokens)
    per_request = (1 - ci.cache_rate) * uncached + ci.cache_rate * ci.cached_usd
    monthly_requests = ci.daily_requests * ci.days_per_month
    return {
        "daily_requests": ci.daily_requests,
        "monthly_requests": monthly_requests,
        "uncached_per_request_usd": round(uncached, 8),
        "per_request_usd": round(per_request, 8),
        "daily_cost_usd": round(per_request * ci.daily_requests, 2),
        "monthly_cost_usd": round(per_request * monthly_requests, 2),
        "cache_saving_monthly_usd": round((uncached - per_request) * monthly_requests, 2),
        "assumptions": {
            "days_per_month": ci.days_per_month, "cache_rate": ci.cache_rate,
            "cached_request_usd": ci.cached_usd, "input_tokens": ci.input_tokens,
            "output_tokens": ci.output_tokens, **asdict(ci.prices)},
    }


def growth(ci: CostInputs, monthly_growth: float, months: int) -> list[dict]:
    """Month by month, traffic compounding by ``monthly_growth``."""
    base = project(ci)["per_request_usd"]
    rows, cum = [], 0.0
    for m in range(1, months + 1):
        req = ci.daily_requests * ci.days_per_month * (1 + monthly_growth) ** (m - 1)
        cost = base * req
        cum += cost
        rows.append({"month": m, "requests": round(req), "cost_usd": round(cost, 2),
                     "cumulative_usd": round(cum, 2)})
    return rows


def self_hosted_monthly(daily_requests: float, tokens_per_request: float, sh: SelfHosted,
                        peak_to_mean: float = 1.0) -> dict:
    """GPUs to carry the traffic (sized on mean x peak_to_mean) and what they cost per month."""
    tokens_per_s = daily_requests * tokens_per_request / DAY_S * peak_to_mean
    gpus = max(sh.min_gpus, math.ceil(tokens_per_s / (sh.gpu_tokens_per_s * sh.utilisation)
                                      - 1e-9))
    return {"gpus": gpus, "monthly_cost_usd": round(gpus * HOURS_PER_MONTH * sh.gpu_hour_usd, 2),
            "gpu_hours": gpus * HOURS_PER_MONTH}


def break_even(ci: CostInputs, sh: SelfHosted, peak_to_mean: float = 1.0) -> dict:
    """The daily volume above which self-hosting costs less than the API, if there is one."""
    api_per_request = project(ci)["per_request_usd"]
    tpr = ci.input_tokens + ci.output_tokens
    # Self-hosted cost per request at full planned utilisation (the slope of the step function).
    marginal = sh.gpu_hour_usd / 3600 / (sh.gpu_tokens_per_s * sh.utilisation) * tpr * peak_to_mean
    out: dict = {"api_per_request_usd": api_per_request,
                 "self_hosted_marginal_per_request_usd": round(marginal, 8),
                 "assumptions": {**asdict(sh), "peak_to_mean": peak_to_mean,
                                 "tokens_per_request": tpr}}
    if api_per_request <= 0 or marginal >= api_per_request:
        out["break_even_daily_requests"] = None
        out["verdict"] = "the API is cheaper at every volume with these numbers"
        return out
    # Scan the step function: first volume where the GPU fleet undercuts the API bill.
    lo = sh.min_gpus * HOURS_PER_MONTH * sh.gpu_hour_usd / (api_per_request * ci.days_per_month)
    daily = lo
    for _ in range(10_000):
        hosted = self_hosted_monthly(daily, tpr, sh, peak_to_mean)["monthly_cost_usd"]
        if hosted <= api_per_request * daily * ci.days_per_month:
            break
        daily *= 1.01
    out["break_even_daily_requests"] = round(daily)
    out["current_daily_requests"] = ci.daily_requests
    cur = self_hosted_monthly(ci.daily_requests, tpr, sh, peak_to_mean)
    out["self_hosted_at_current"] = cur
    out["api_at_current_monthly_usd"] = round(api_per_request * ci.daily_requests *
                                              ci.days_per_month, 2)
    out["verdict"] = ("self-hosting is cheaper now" if cur["monthly_cost_usd"] <
                      out["api_at_current_monthly_usd"] else
                      f"the API is cheaper until about {round(daily):,} requests/day")
    return out


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


def _pareto(by: pl.DataFrame, key: str) -> dict:
    costs = np.sort(by["cost_usd"].to_numpy())[::-1]
    total = costs.sum()
    if total <= 0:
        return {"top_20pct_share": None, "n_for_80pct": None, "curve": []}
    cum = np.cumsum(costs) / total
    n = len(costs)
    top = max(1, int(math.ceil(0.2 * n)))
    idx = np.unique(np.linspace(0, n - 1, min(n, 50)).astype(int))
    return {"top_20pct_share": float(cum[top - 1]),
            "n_for_80pct": int(np.searchsorted(cum, 0.8) + 1),
            "curve": [[float((i + 1) / n), float(cum[i])] for i in idx]}


def unit_economics(trace: Trace, prices: TokenPrices, top: int = 10) -> dict | None:
    df = request_costs(trace, prices)
    if df is None:
        return None
    from_ledger = trace.has("cost_usd")
    total = float(df["cost_usd"].sum())
    n = float(df["n"].sum())
    tokens = sum(float(df[c].fill_null(0).sum()) for c in ("input_tokens", "output_tokens")
                 if c in df.columns)
    days = max((trace.end_s - trace.start_s - trace.gap_s) / DAY_S, 1e-9)
    out: dict = {
        "cost_source": "ledger cost_usd" if from_ledger else
        f"tokens x prices (input ${prices.input_usd_per_1k}/1k, output "
        f"${prices.output_usd_per_1k}/1k)",
        "total_usd": total, "requests": n,
        "per_request_usd": total / n if n else None,
        "per_1k_tokens_usd": total / tokens * 1000 if tokens else None,
        "per_day_usd": total / days, "monthly_run_rate_usd": total / days * DAYS_PER_MONTH,
        "observed_days": days,
    }
    day = df.with_columns((pl.col("ts") // DAY_S * DAY_S).alias("day")).group_by("day").agg(
        pl.col("cost_usd").sum(), pl.col("n").sum().alias("requests")).sort("day")
    out["by_day"] = day.to_dicts()
    for key in ("user", "feature", "team", "model"):
        if trace.has(key):
            by = df.group_by(key).agg(pl.col("cost_usd").sum(), pl.col("n").sum().alias(
                "requests")).sort("cost_usd", descending=True)
            out[f"by_{key}"] = {
                "count": by.height,
                "per_" + key + "_usd": total / by.height if by.height else None,
                "top": [{**r, "share": r["cost_usd"] / total if total else 0.0}
                        for r in by.head(top).to_dicts()],
                "pareto": _pareto(by, key),
            }
    return out
