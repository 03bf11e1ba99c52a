"""``margin plan``: load analysis, forecasts, capacity, autoscaling replay, what-if, report."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click
import orjson

from margin.errors import InputError
from margin.plan.capacity import Prices
from margin.plan.costs import TokenPrices
from margin.plan.options import CapacityOptions, parse_duration
from margin.plan.traces import FORMATS, ColumnMap, GapRule, Trace, load_trace
from margin.plan.whatif import WhatIfAssumptions


class PlanInputError(click.ClickException):
    """Bad input (a trace, an option): one line on stderr, exit code 2."""
    exit_code = 2

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        click.echo(f"margin: error: {self.message}", err=True)


def _guard(f: Callable) -> Callable:
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except InputError as exc:
            raise PlanInputError(exc.message) from None
        except ValueError as exc:
            raise PlanInputError(str(exc)) from None
    return wrapper


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


trace_options = _stack(
    click.argument("trace"),
    click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                 help="Trace format; auto-detected from the header where unambiguous."),
    click.option("--time-col", help="Generic CSV/Parquet: the time column (unix s/ms or ISO)."),
    click.option("--input-tokens-col", help="Generic CSV/Parquet: input (prompt) tokens."),
    click.option("--output-tokens-col", help="Generic CSV/Parquet: output (completion) tokens."),
    click.option("--user-col", help="Generic CSV/Parquet: who sent the request."),
    click.option("--feature-col", help="Generic CSV/Parquet: which feature sent it."),
    click.option("--gap-min-s", type=float, default=900, show_default=True,
                 help="An empty stretch this long, where the traffic around it predicts 30+ "
                      "requests, is a gap in the data (not zero traffic)."),
)

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

serving_option = click.option(
    "--serving", type=click.Choice(["auto", "api", "self-hosted", "both"]), default="auto",
    show_default=True, help="Which bill the roadmap cuts: tokens bought from an API, replicas "
    "you run, or both [auto: api when the trace has tokens or costs].")

price_options = _stack(
    click.option("--input-usd-per-1k", type=float, default=0.0025, show_default=True,
                 help="API price of 1k input tokens (for traces without costs)."),
    click.option("--output-usd-per-1k", type=float, default=0.01, show_default=True,
                 help="API price of 1k output tokens."),
)

capacity_options = _stack(
    click.option("--replica-rps", type=float,
                 help="Requests/s one replica completes when busy [default: 2, or from "
                      "--replica-tokens-per-s / --replica-bench / --ledger]."),
    click.option("--replica-tokens-per-s", type=float,
                 help="Tokens/s (input+output) one replica sustains; with the trace's token mix."),
    click.option("--replica-bench", type=click.Path(exists=True, dir_okay=False),
                 help="A margin bench JSON result (bench gateway --json-out, bench batching "
                      "--json) or one with replica_rps / tokens_per_s: the best measured cell "
                      "gives requests/s and concurrency."),
    click.option("--ledger", "replica_ledger",
                 help="The gateway's ledger (SQLite path or postgresql:// URL): requests/s and "
                      "concurrency from its upstream times (Little's law, busiest minute)."),
    click.option("--ledger-model", help="Which model's rows of --ledger [default: the busiest]."),
    click.option("--concurrency", type=click.IntRange(1),
                 help="Requests one replica serves at once (service time = concurrency / rps) "
                      "[default: measured by --replica-bench / --ledger, else 4]."),
    click.option("--slo-p95-ms", type=float, default=5000, show_default=True,
                 help="Latency SLO: 95 % of requests under this."),
    click.option("--utilisation-cap", type=float, default=0.85, show_default=True,
                 help="Never plan a replica busier than this on average."),
    click.option("--startup-s", type=int, default=60, show_default=True,
                 help="Seconds from 'replica requested' to 'replica serving'."),
    click.option("--metric-lag-s", type=int, default=30, show_default=True,
                 help="Age of the newest metric an autoscaler sees."),
    click.option("--min-replicas", type=int, default=1, show_default=True),
    click.option("--max-replicas", type=int, help="[default: 1.5 x the clairvoyant peak]"),
    click.option("--on-demand-usd-per-h", type=float, default=2.50, show_default=True,
                 help="Price of one on-demand replica-hour."),
    click.option("--reserved-usd-per-h", type=float, default=1.60, show_default=True,
                 help="Effective hourly price of a reserved (committed) replica."),
    click.option("--spot-usd-per-h", type=float, default=0.90, show_default=True,
                 help="Price of one spot (interruptible) replica-hour."),
    click.option("--spot-max-share", type=float, default=0.3, show_default=True,
                 help="At most this share of running replicas on spot."),
    click.option("--growth-monthly", type=float, default=0.0, show_default=True,
                 help="Traffic growth per 30 days, compounding (0.10 = +10 %)."),
    click.option("--sim-days", type=float, default=7.0, show_default=True,
                 help="Replay the last this many days of the trace."),
)


def _trace(kw: dict) -> Trace:
    cols = ColumnMap(time=kw.pop("time_col"), input_tokens=kw.pop("input_tokens_col"),
                     output_tokens=kw.pop("output_tokens_col"), user=kw.pop("user_col"),
                     feature=kw.pop("feature_col"))
    return load_trace(kw.pop("trace"), kw.pop("fmt"), cols, GapRule(min_s=kw.pop("gap_min_s")))


def _capacity(kw: dict) -> CapacityOptions:
    prices = Prices(on_demand_usd_per_h=kw.pop("on_demand_usd_per_h"),
                    reserved_usd_per_h=kw.pop("reserved_usd_per_h"),
                    spot_usd_per_h=kw.pop("spot_usd_per_h"),
                    spot_max_share=kw.pop("spot_max_share"))
    return CapacityOptions(
        replica_rps=kw.pop("replica_rps"), replica_tokens_per_s=kw.pop("replica_tokens_per_s"),
        replica_bench=kw.pop("replica_bench"), replica_ledger=kw.pop("replica_ledger"),
        ledger_model=kw.pop("ledger_model"), concurrency=kw.pop("concurrency"),
        slo_p95_ms=kw.pop("slo_p95_ms"), utilisation_cap=kw.pop("utilisation_cap"),
        startup_s=kw.pop("startup_s"), metric_lag_s=kw.pop("metric_lag_s"),
        min_replicas=kw.pop("min_replicas"), max_replicas=kw.pop("max_replicas"), prices=prices,
        growth_monthly=kw.pop("growth_monthly"), sim_days=kw.pop("sim_days"))


def _prices(kw: dict) -> TokenPrices:
    return TokenPrices(kw.pop("input_usd_per_1k"), kw.pop("output_usd_per_1k"))


def _duration(text: str | None) -> float | None:
    return None if text in (None, "auto") else parse_duration(text)


def _emit_json(doc: object) -> None:
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 |
                                         orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                                         default=_json_default))
    sys.stdout.write("\n")


def _json_default(o: object) -> object:
    if hasattr(o, "to_json"):
        return o.to_json()
    raise TypeError(type(o).__name__)


def _console():
    from rich.console import Console
    # Tables are wide; when piped, do not squeeze them into 80 columns.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@click.group()
def plan() -> None:
    """Plan capacity and cost from the ledger or a trace."""


@plan.command()
@trace_options
@price_options
@json_option
@_guard
def analyze(as_json: bool, **kw) -> None:
    """Requests and tokens per second, peaks, burstiness, profiles, cost by user and feature."""
    from margin.plan import render
    from margin.plan.costs import unit_economics
    from margin.plan.load import analyze_load
    prices = _prices(kw)
    trace = _trace(kw)
    a = analyze_load(trace)
    econ = unit_economics(trace, prices)
    if as_json:
        _emit_json({"load": a.to_json(), "costs": econ.to_json() if econ else None})
        return
    render.analysis(_console(), a, econ)


@plan.command("forecast")
@trace_options
@click.option("--horizon", default="auto", show_default=True,
              help="How far ahead: 168h, 7d, 15m ... [auto: a quarter of the trace, at most 7d]")
@click.option("--resolution", default="auto", show_default=True,
              help="Step: 1h, 10m, 1m ... [auto: 1h, or 1m for traces under 4 days]")
@click.option("--growth-monthly", type=float, default=0.0, show_default=True,
              help="Growth per 30 days applied on top of the model.")
@click.option("--no-backtest", is_flag=True, help="Skip the backtest (faster).")
@json_option
@_guard
def forecast_cmd(horizon: str, resolution: str, growth_monthly: float, no_backtest: bool,
                 as_json: bool, **kw) -> None:
    """Forecast load with 80 % intervals, backtested against seasonal naive."""
    from margin.plan import render
    from margin.plan.planner import run_forecast
    trace = _trace(kw)
    fc = run_forecast(trace, _duration(horizon), _duration(resolution), growth_monthly,
                      backtest=not no_backtest)
    if as_json:
        _emit_json(fc.to_json())
        return
    render.forecast(_console(), fc, trace.absolute_time)


@plan.command("backtest")
@trace_options
@click.option("--horizon", "horizons", multiple=True, default=("24h", "72h", "168h"),
              show_default=True, help="Forecast horizon to test; repeat for several.")
@click.option("--resolution", default="auto", show_default=True,
              help="Step: 1h, 10m ... [auto: 1h, or 1m for traces under 4 days]")
@json_option
@_guard
def backtest_cmd(horizons: tuple[str, ...], resolution: str, as_json: bool, **kw) -> None:
    """Forecast from rolling past origins and score it against the best seasonal naive."""
    from margin.plan import render
    from margin.plan.planner import run_backtest
    trace = _trace(kw)
    rep = run_backtest(trace, [parse_duration(h) for h in horizons], _duration(resolution))
    if as_json:
        _emit_json(rep.to_json())
        return
    render.backtest(_console(), rep)


@plan.command()
@trace_options
@capacity_options
@click.option("--horizon", default="auto", show_default=True, help="Planning horizon.")
@json_option
@_guard
def capacity(horizon: str, as_json: bool, **kw) -> None:
    """Replicas per period for the SLO (queueing theory) next to the rule of thumb; price mix."""
    from margin.plan import render
    from margin.plan.planner import build_context, capacity_plan, run_forecast
    opts = _capacity(kw)
    trace = _trace(kw)
    ctx = build_context(trace, opts)
    fc = run_forecast(trace, _duration(horizon), None, opts.growth_monthly, backtest=False)
    cap = capacity_plan(ctx, opts, fc)
    if as_json:
        _emit_json(cap.to_json())
        return
    render.capacity(_console(), cap, trace.absolute_time)


@plan.command()
@trace_options
@capacity_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write hpa.yaml, keda.yaml and ray-serve.yaml here.")
@click.option("--quick", is_flag=True, help="A smaller parameter search.")
@click.option("--keda-schema", type=click.Path(dir_okay=False),
              help="KEDA ScaledObject JSON schema to validate keda.yaml against.")
@json_option
@_guard
def autoscale(out_dir: str | None, quick: bool, keda_schema: str | None, as_json: bool,
              **kw) -> None:
    """Replay the trace through HPA, threshold steps, Ray Serve and a clairvoyant bound."""
    from margin.plan import render
    from margin.plan.planner import autoscale_plan, build_context
    opts = _capacity(kw)
    ctx = build_context(_trace(kw), opts)
    with _progress(not as_json) as step:
        auto = autoscale_plan(ctx, opts, quick=quick, progress=step, keda_schema=keda_schema)
    if out_dir:
        auto.write(Path(out_dir))
    if as_json:
        _emit_json(auto.to_json())
        return
    con = _console()
    render.replica_assumptions(con, ctx.assumptions(), opts.startup_s, opts.metric_lag_s)
    res = auto.search
    bounds = [r for r in (res.clairvoyant, res.reachable) if r is not None]
    rows = [*bounds, *res.defaults.values(),
            *[r for r in res.best_by_family.values() if r not in res.defaults.values()]]
    render.policies(con, rows, res.recommended)
    render.advice(con, auto)
    if out_dir:
        con.print(f"wrote {out_dir}/{', '.join(auto.files())}")
    for name, probs in auto.problems.items():
        for p in probs:
            con.print(f"[yellow]{name}: {p}[/]")


@plan.command()
@trace_options
@capacity_options
@price_options
@click.option("--exact-hit-rate", type=float, help="[default: measured from prompt hashes]")
@click.option("--semantic-extra-hit-rate", type=float, default=0.08, show_default=True)
@click.option("--tier-share", type=float, default=0.40, show_default=True,
              help="Share of requests a cheaper model can take.")
@click.option("--tier-price-ratio", type=float, default=0.10, show_default=True)
@click.option("--engineer-day-usd", type=float, default=800, show_default=True)
@click.option("--no-replay", is_flag=True, help="Skip the autoscaling replay.")
@serving_option
@json_option
@_guard
def whatif(exact_hit_rate, semantic_extra_hit_rate, tier_share, tier_price_ratio,
           engineer_day_usd, no_replay: bool, serving: str, as_json: bool, **kw) -> None:
    """The savings of each optimisation, compounding, ordered into a roadmap with ROI."""
    from margin.plan import render
    from margin.plan.planner import (autoscale_plan, build_context, capacity_plan, run_forecast,
                                     whatif_plan)
    prices = _prices(kw)
    opts = _capacity(kw)
    ctx = build_context(_trace(kw), opts)
    fc = run_forecast(ctx.trace, None, None, opts.growth_monthly, backtest=False)
    cap = capacity_plan(ctx, opts, fc)
    auto = None
    if not no_replay:
        with _progress(not as_json) as step:
            auto = autoscale_plan(ctx, opts, quick=True, progress=step)
    a = WhatIfAssumptions(engineer_day_usd=engineer_day_usd, exact_hit_rate=exact_hit_rate,
                          semantic_extra_hit_rate=semantic_extra_hit_rate, tier_share=tier_share,
                          tier_price_ratio=tier_price_ratio)
    wi = whatif_plan(ctx, opts, prices, a, auto, cap, serving)
    if as_json:
        _emit_json(wi.to_json())
        return
    render.roadmap(_console(), wi)


@plan.command()
@trace_options
@capacity_options
@price_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for index.html, plan.json, hpa.yaml, keda.yaml, ray-serve.yaml.")
@click.option("--horizon", default="auto", show_default=True)
@click.option("--quick", is_flag=True, help="A smaller autoscaling search.")
@click.option("--keda-schema", type=click.Path(dir_okay=False))
@serving_option
@_guard
def report(out_dir: str, horizon: str, quick: bool, keda_schema: str | None, serving: str,
           **kw) -> None:
    """Everything above into one offline HTML report plus plan.json and the manifests."""
    from margin.plan.report.build import build_report
    prices = _prices(kw)
    opts = _capacity(kw)
    con = _console()
    with _progress(True) as step:
        step("reading the trace")
        trace = _trace(kw)
        summary = build_report(trace, opts, prices, Path(out_dir), _duration(horizon), quick,
                               keda_schema, step, serving)
    for line in summary:
        con.print(line)


class _progress:
    """A rich progress line for steps that take a while; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._p = None

    def __enter__(self) -> Callable[[str], None]:
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                               TimeElapsedColumn(), transient=True, console=Console(stderr=True))
            self._p.start()
            self._task = self._p.add_task("starting")
        return self._step

    def _step(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=text)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.stop()
