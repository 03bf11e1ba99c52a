"""``margin cost``: the unit-economics calculator (monthly cost, growth, API vs self-hosted)."""

from __future__ import annotations

import sys
from dataclasses import replace

import click
import orjson

from margin.plan.costs import CostInputs, SelfHosted, TokenPrices, break_even, growth, project


@click.group()
def cost() -> None:
    """Cost calculators."""


@cost.command("project")
@click.option("--daily-requests", type=float, required=True, help="Requests per day.")
@click.option("--input-tokens", type=float, required=True, help="Average input tokens.")
@click.option("--output-tokens", type=float, required=True, help="Average output tokens.")
@click.option("--input-usd-per-1k", type=float, required=True, help="USD per 1k input tokens.")
@click.option("--output-usd-per-1k", type=float, required=True, help="USD per 1k output tokens.")
@click.option("--cache-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests answered from the cache.")
@click.option("--cached-usd", type=float, default=0.0, show_default=True,
              help="Cost of one request answered from the cache.")
@click.option("--days-per-month", type=int, default=30, show_default=True)
@click.option("--months", type=int, default=12, show_default=True, help="Months of growth shown.")
@click.option("--growth-monthly", type=float, default=0.0, show_default=True,
              help="Traffic growth per month, compounding (0.10 = +10 %).")
@click.option("--gpu-hour-usd", type=float, default=2.50, show_default=True,
              help="Self-hosted: price of one GPU-hour.")
@click.option("--gpu-tokens-per-s", type=float, default=2500.0, show_default=True,
              help="Self-hosted: measured input+output tokens/s of one GPU (margin bench).")
@click.option("--gpu-utilisation", type=click.FloatRange(0.01, 1), default=0.6,
              show_default=True, help="Self-hosted: average share of that throughput planned.")
@click.option("--min-gpus", type=int, default=1, show_default=True)
@click.option("--peak-to-mean", type=float, default=1.0, show_default=True,
              help="Self-hosted: size the fleet on mean traffic x this.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def project_cmd(daily_requests: float, input_tokens: float, output_tokens: float,
                input_usd_per_1k: float, output_usd_per_1k: float, cache_rate: float,
                cached_usd: float, days_per_month: int, months: int, growth_monthly: float,
                gpu_hour_usd: float, gpu_tokens_per_s: float, gpu_utilisation: float,
                min_gpus: int, peak_to_mean: float, as_json: bool) -> None:
    """Monthly cost and cost per request; growth; API versus self-hosted break-even."""
    if min(daily_requests, input_tokens, output_tokens, input_usd_per_1k, output_usd_per_1k,
           cached_usd) < 0:
        raise click.BadParameter("requests, tokens and prices must not be negative")
    ci = CostInputs(daily_requests, input_tokens, output_tokens,
                    TokenPrices(input_usd_per_1k, output_usd_per_1k), cache_rate, cached_usd,
                    days_per_month)
    sh = SelfHosted(gpu_hour_usd, gpu_tokens_per_s, gpu_utilisation, min_gpus)
    pr = replace(project(ci), monthly_growth=growth_monthly,
                 months=tuple(growth(ci, growth_monthly, months)),
                 self_hosted=break_even(ci, sh, peak_to_mean))
    if as_json:
        sys.stdout.buffer.write(orjson.dumps(pr.to_json(), option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return
    click.echo(f"per request: ${pr.per_request_usd:.6f} "
               f"(uncached ${pr.uncached_per_request_usd:.6f} x {1 - ci.cache_rate:.0%} + "
               f"cached ${ci.cached_usd:g} x {ci.cache_rate:.0%})")
    click.echo(f"monthly ({days_per_month} days, {pr.monthly_requests:,.0f} requests): "
               f"${pr.monthly_cost_usd:,.2f}; the cache saves "
               f"${pr.cache_saving_monthly_usd:,.2f}")
    if growth_monthly and pr.months:
        last = pr.months[-1]
        click.echo(f"with {growth_monthly:.0%}/month growth: month {last.month} costs "
                   f"${last.cost_usd:,.2f}; {len(pr.months)} months ${last.cumulative_usd:,.2f}")
    be = pr.self_hosted
    assert be is not None
    n = be.break_even_daily_requests
    click.echo(f"self-hosted at ${gpu_hour_usd:g}/GPU-hour, {gpu_tokens_per_s:g} tokens/s x "
               f"{gpu_utilisation:.0%}: ${be.self_hosted_marginal_per_request_usd:.6f} per "
               f"request at full load; " + (f"break-even at {n:,} requests/day; "
                                            if n else "") + be.verdict)
