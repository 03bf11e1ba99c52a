"""Budgets and capacity as the console and ``margin alerts`` show them: each budget's use
in its period with its projected exhaustion, each model's load against its capacity, and
the alerts these raise. The math is ``limits/forecasts.py``; the ledger is read through
``metering/console_queries.py`` (the rollups); the clock is passed in.

Which budgets: every ``usd`` rule of ``limits.budgets`` (a ``"*"`` rule: its biggest
spenders in the period, up to ``max_scopes_per_rule``) and every key with a budget.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from zoneinfo import ZoneInfo

import numpy as np

from margin.limits.alerts import Alerter, sent_alerts
from margin.limits.config import BudgetRule, ForecastAlertConfig, ModelCapacity
from margin.limits.forecasts import (CAPACITY_ALERT_SHARE, ForecastCache, budget_horizon,
                                     forecast_load, hourly_forecast, project_budget)
from margin.limits.periods import period_bounds
from margin.limits.watch import every
from margin.metering import console_queries as cq
from margin.metering.db import Database, connect
from margin.metering.queries import Filters

log = logging.getLogger("margin.limits")
HOUR_S = 3600
_SCOPE_FILTER = {"user": "user", "team": "team", "feature": "feature", "key": "key"}
_COST = ("requests", "cost_usd")


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    scope: str        # user | team | feature | key
    name: str         # a value, or "*"
    limit_usd: float
    period: str       # day | week | month


def budget_specs(rules: Sequence[BudgetRule], keys: Sequence[tuple[str, float, str | None]]
                 ) -> list[BudgetSpec]:
    """The USD budgets to project: configured rules and (key id, budget, period) of keys."""
    out = [BudgetSpec(r.scope, r.name, float(r.usd), r.period) for r in rules
           if r.usd is not None]
    out += [BudgetSpec("key", k, float(usd), period or "month") for k, usd, period in keys
            if usd]
    return out


@dataclass
class BudgetReport:
    scope: str
    period: str
    limit_usd: float
    spent_usd: float
    period_start: float
    period_end: float
    projected_usd: float
    projected_low_usd: float
    projected_high_usd: float
    exhaustion_at: float | None
    exhaustion_low: float | None
    exhaustion_high: float | None
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        r6 = lambda v: round(v, 6)  # noqa: E731
        return {"scope": self.scope, "period": self.period, "limit_usd": self.limit_usd,
                "spent_usd": r6(self.spent_usd),
                "share_used": round(self.spent_usd / self.limit_usd, 4),
                "period_start": self.period_start, "period_end": self.period_end,
                "projected_usd": r6(self.projected_usd),
                "projected_low_usd": r6(self.projected_low_usd),
                "projected_high_usd": r6(self.projected_high_usd),
                "exhaustion_at": self.exhaustion_at, "exhaustion_low": self.exhaustion_low,
                "exhaustion_high": self.exhaustion_high, "alerts": self.alerts}


def _hourly(db: Database, f: Filters, start_s: float, end_s: float) -> np.ndarray:
    """Cost per whole hour in [start_s, end_s) (both hour-aligned), zeros where none."""
    n = int((end_s - start_s) // HOUR_S)
    values = np.zeros(max(n, 0))
    for t, tot in cq.totals_per_bucket(db, Filters(**{**_as_kwargs(f), "since_s": start_s,
                                                      "until_s": end_s}), HOUR_S):
        i = int((t - start_s) // HOUR_S)
        if 0 <= i < n:
            values[i] = tot.cost_usd
    return values


def _as_kwargs(f: Filters) -> dict[str, Any]:
    return {k: getattr(f, k) for k in f.__dataclass_fields__}


def budget_reports(db: Database, specs: Sequence[BudgetSpec], tz_name: str, now_s: float,
                   cfg: ForecastAlertConfig = ForecastAlertConfig(),
                   cache: ForecastCache | None = None) -> list[BudgetReport]:
    tz = ZoneInfo(tz_name)
    hour_now = (now_s // HOUR_S) * HOUR_S
    history_start = hour_now - cfg.history_days * 86400
    out: list[BudgetReport] = []
    for spec in specs:
        b = period_bounds(spec.period, now_s, tz)
        if spec.name == "*":
            window = Filters(b.start_s, now_s)
            # Only the cost is summed: a month of 2,000 users is tens of thousands of
            # rollup rows.
            spenders = sorted(((v, s.cost_usd) for (v,), s in
                               cq.sums(db, window, (spec.scope,), measures=_COST).items()
                               if v is not None), key=lambda x: -x[1])[:cfg.max_scopes_per_rule]
            names = [v for v, cost in spenders if v is not None and cost > 0]
        else:
            names = [spec.name]
        for name in names:
            f = Filters(**{_SCOPE_FILTER[spec.scope]: name})
            spent = cq.sums(db, Filters(**{**_as_kwargs(f), "since_s": b.start_s,
                                           "until_s": now_s + 1e-6}), measures=_COST
                            ).get((), cq.ZERO).cost_usd
            n_out = budget_horizon(now_s, b.end_s)

            def fit(f: Filters = f, n_out: int = n_out) -> Any:
                return hourly_forecast(_hourly(db, f, history_start, hour_now), history_start,
                                       n_out)
            fc = fit() if cache is None else cache.get(
                ("budget", spec.scope, name, history_start, n_out), fit)
            p = project_budget(np.zeros(0), history_start, spent, spec.limit_usd, now_s,
                               b.end_s, fc)
            out.append(BudgetReport(f"{spec.scope}:{name}", spec.period, spec.limit_usd, spent,
                                    b.start_s, b.end_s, p.projected_usd, p.projected_low_usd,
                                    p.projected_high_usd, p.exhaustion_at, p.exhaustion_low,
                                    p.exhaustion_high))
    out.sort(key=lambda r: (-(r.spent_usd / r.limit_usd), r.scope))
    return out


@dataclass
class ModelLoad:
    model: str
    capacity: ModelCapacity | None
    now_rps: float
    now_tps: float
    history: list[tuple[float, float, float]]   # (hour start, rps, tps)
    forecast: list[dict[str, float]]
    crosses_at: float | None
    crosses_80pct_at: float | None

    def to_json(self) -> dict[str, Any]:
        cap = None if self.capacity is None else {
            "rps": self.capacity.rps, "tps": self.capacity.tps, "source": self.capacity.source}
        return {"model": self.model, "capacity": cap,
                "now": {"rps": round(self.now_rps, 6), "tps": round(self.now_tps, 6)},
                "series": [{"t": t, "rps": round(r, 6), "tps": round(x, 6)}
                           for t, r, x in self.history],
                "forecast": self.forecast, "crosses_at": self.crosses_at,
                "crosses_80pct_at": self.crosses_80pct_at}


def capacity_reports(db: Database, capacity: Mapping[str, ModelCapacity], now_s: float,
                     horizon_s: float, cfg: ForecastAlertConfig = ForecastAlertConfig(),
                     cache: ForecastCache | None = None) -> list[ModelLoad]:
    hour_now = (now_s // HOUR_S) * HOUR_S
    start = hour_now - cfg.history_days * 86400
    n = int((hour_now - start) // HOUR_S)
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for mh in cq.model_hours(db, start, hour_now):
        r, t = per.setdefault(mh.model, (np.zeros(n), np.zeros(n)))
        i = int((mh.hour * HOUR_S - start) // HOUR_S)
        r[i] += mh.requests / HOUR_S
        t[i] += mh.tokens / HOUR_S
    for name in capacity:
        per.setdefault(name, (np.zeros(n), np.zeros(n)))
    # "now": the last complete hour's mean, plus the current hour so far.
    current = {mh.model: mh for mh in cq.model_hours(db, hour_now, hour_now + HOUR_S)}
    elapsed = max(now_s - hour_now, 1.0)
    out = []
    for model in sorted(per):
        rps, tps = per[model]
        cap = capacity.get(model)
        first = int(np.flatnonzero((rps > 0) | (tps > 0))[0]) if np.any(rps > 0) else n
        def fit(rps: np.ndarray = rps, tps: np.ndarray = tps, first: int = first,
                cap: ModelCapacity | None = cap) -> Any:
            return forecast_load(rps[first:], tps[first:], start + first * HOUR_S, horizon_s,
                                 cap.rps if cap else None, cap.tps if cap else None)
        fc = fit() if cache is None else cache.get(
            ("load", model, start, horizon_s, cap.rps if cap else None,
             cap.tps if cap else None), fit)
        cur = current.get(model)
        rows = [{"t": float(t), "rps": round(float(a), 6), "rps_low": round(float(b), 6),
                 "rps_high": round(float(c), 6), "tps": round(float(d), 6),
                 "tps_low": round(float(e), 6), "tps_high": round(float(g), 6)}
                for t, a, b, c, d, e, g in zip(fc.times, fc.rps, fc.rps_low, fc.rps_high,
                                               fc.tps, fc.tps_low, fc.tps_high)]
        out.append(ModelLoad(
            model, cap, cur.requests / elapsed if cur else 0.0,
            cur.tokens / elapsed if cur else 0.0,
            [(start + i * HOUR_S, float(rps[i]), float(tps[i])) for i in range(first, n)],
            rows, fc.crosses_at, fc.crosses_80pct_at))
    return out


# ---------------------------------------------------------------------------------- alerts

@dataclass(frozen=True, slots=True)
class ForecastAlert:
    kind: str           # budget_exhaustion | capacity
    scope: str          # "user:u1" (with its period) or "model:small"
    predicted_at: float
    message: str
    key: str            # the latch key: once per budget period / per model and day
    ttl_s: float

    def to_json(self, fired_at: float | None) -> dict[str, Any]:
        return {"kind": self.kind, "scope": self.scope, "fired_at": fired_at,
                "predicted_at": self.predicted_at, "message": self.message}


def _when(ts: float, tz: ZoneInfo) -> str:
    return dt.datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M %Z")


def alerts_for(budgets: Sequence[BudgetReport], loads: Sequence[ModelLoad], tz_name: str,
               now_s: float) -> list[ForecastAlert]:
    tz = ZoneInfo(tz_name)
    out = []
    for b in budgets:
        if b.exhaustion_at is None or b.spent_usd >= b.limit_usd:
            continue  # a budget already spent is the threshold alerts' business
        label = dt.datetime.fromtimestamp(b.period_start, tz).date().isoformat()
        band = ""
        if b.exhaustion_low is not None:
            band = (f" (80 % band {_when(b.exhaustion_low, tz)} to "
                    f"{_when(b.exhaustion_high, tz) if b.exhaustion_high else 'after the end'})")
        out.append(ForecastAlert(
            "budget_exhaustion", b.scope, b.exhaustion_at,
            f"{b.scope} is projected to spend its {b.period}ly budget of {b.limit_usd:g} USD "
            f"by {_when(b.exhaustion_at, tz)}{band}, before the period ends "
            f"({_when(b.period_end, tz)}); spent {b.spent_usd:.2f} USD so far",
            f"forecast:budget:{b.scope}:{b.period}:{label}",
            max(b.period_end - now_s, 0.0) + 86400))
    for m in loads:
        if m.capacity is None or m.crosses_80pct_at is None:
            continue
        day = dt.datetime.fromtimestamp(now_s, dt.timezone.utc).date().isoformat()
        out.append(ForecastAlert(
            "capacity", f"model:{m.model}", m.crosses_80pct_at,
            f"model {m.model}'s forecast load reaches {CAPACITY_ALERT_SHARE:.0%} of its "
            f"capacity ({m.capacity.source}) by {_when(m.crosses_80pct_at, tz)}"
            + (f", and all of it by {_when(m.crosses_at, tz)}" if m.crosses_at else ""),
            f"forecast:capacity:{m.model}:{day}", 2 * 86400))
    return out


class ForecastWatcher:
    """Every ``interval_s``: project budgets and load, fire each alert once (the latch)."""

    def __init__(self, db_url: str, cfg: ForecastAlertConfig, rules: Sequence[BudgetRule],
                 capacity: Mapping[str, ModelCapacity], tz_name: str, alerter: Alerter,
                 keys: Callable[[Database], list[tuple[str, float, str | None]]],
                 clock: Callable[[], float] = time.time) -> None:
        self.db_url = db_url
        self.cfg = cfg
        self.rules = list(rules)
        self.capacity = dict(capacity)
        self.tz_name = tz_name
        self.alerter = alerter
        self.keys = keys
        self.clock = clock
        self.last: list[ForecastAlert] = []

    def evaluate(self, now_s: float) -> list[ForecastAlert]:
        db = connect(self.db_url)
        try:
            budgets = budget_reports(db, budget_specs(self.rules, self.keys(db)),
                                     self.tz_name, now_s, self.cfg)
            loads = capacity_reports(db, self.capacity, now_s,
                                     self.cfg.capacity_horizon_days * 86400, self.cfg)
        finally:
            db.close()
        return alerts_for(budgets, loads, self.tz_name, now_s)

    @classmethod
    def for_settings(cls, db_url: str, cfg: ForecastAlertConfig, rules: Sequence[BudgetRule],
                     capacity: Mapping[str, ModelCapacity], tz_name: str,
                     alerter: Alerter) -> "ForecastWatcher":
        return cls(db_url, cfg, rules, capacity, tz_name, alerter, keys=key_budgets)

    async def check(self) -> list[ForecastAlert]:
        found = await asyncio.to_thread(self.evaluate, self.clock())
        self.last = found
        for a in found:
            self.alerter.fire(a.key, a.ttl_s, {"type": a.kind, "scope": a.scope,
                                               "predicted_at": a.predicted_at,
                                               "message": a.message})
        return found

    async def run(self) -> None:
        offset = min(120.0, self.cfg.interval_s / 10)
        await every(self.cfg.interval_s, offset, self.check, "forecast check", self.clock)


def key_budgets(db: Database) -> list[tuple[str, float, str | None]]:
    """(key id, budget, period) of every live key that has a budget."""
    from margin.auth.keys import KeyStore

    if not db.columns("api_keys"):
        return []
    return [(k.id, float(k.budget_usd), k.budget_period)
            for k in KeyStore(db, run_migrations=False).list() if k.budget_usd]


def sent(db: Database, prefix: str) -> list[tuple[str, float, dict[str, Any]]]:
    """Alerts already sent (the database latch's record; none without its table)."""
    if not db.columns("alerts_sent"):
        return []
    return sent_alerts(db, prefix)


def evaluate(db: Database, rules: Sequence[BudgetRule], capacity: Mapping[str, ModelCapacity],
             tz_name: str, cfg: ForecastAlertConfig, now_s: float,
             cache: ForecastCache | None = None
             ) -> tuple[list[BudgetReport], list[ModelLoad], list[ForecastAlert]]:
    """Every budget's and model's projection, and the alerts they raise now."""
    budgets = budget_reports(db, budget_specs(rules, key_budgets(db)), tz_name, now_s, cfg,
                             cache)
    loads = capacity_reports(db, capacity, now_s, cfg.capacity_horizon_days * 86400, cfg, cache)
    return budgets, loads, alerts_for(budgets, loads, tz_name, now_s)


def alerts_payload(db: Database, rules: Sequence[BudgetRule],
                   capacity: Mapping[str, ModelCapacity], tz_name: str,
                   cfg: ForecastAlertConfig, now_s: float,
                   cache: ForecastCache | None = None) -> dict[str, Any]:
    """What ``/admin/alerts`` and ``margin alerts --json`` answer."""
    _, _, alerts = evaluate(db, rules, capacity, tz_name, cfg, now_s, cache)
    fired = {k: at for k, at, _ in sent(db, "forecast:")}
    return {"generated_at": now_s, "alerts": [a.to_json(fired.get(a.key)) for a in alerts]}
