"""Which budgets a request belongs to, what it reserves on them, and what happens when one
is spent.

The budgets of a request: its key's own budget, and the configured budgets of its user,
team and feature tag (a named budget overrides a ``"*"`` one for the same period). Its
worst case = a bound on its prompt tokens over everything a provider bills
(``margin.limits.tokens``) times the model's learned correction, plus its completion cap
(``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens``, else the catalogue's
``max_output_tokens``, else ``default_max_tokens``, which is then sent upstream) times its
choices, at the model's prices; for a route, whose model is not chosen yet, at the dearest
model's. A self-hosted model is priced by compute time, unknown beforehand: it reserves
nothing and is refused only once the budget is spent. A budget of requests reserves one.

Counters start from the ledger's spend for the current period (read at start-up and every
``ledger_sync_s``, and read again for one budget whenever its counter has to be rebuilt),
so a restart forgets nothing. Crossing a threshold (50/80/100 %) fires an alert once per
period, through the gateway's ``Alerter``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from margin.errors import BudgetExceeded
from margin.limits.alerts import Alerter
from margin.limits.budgets import GRACE_S, NANO, BudgetItem, ReserveResult, to_nusd
from margin.limits.config import BudgetRule, LimitsConfig
from margin.limits.correction import PromptCorrection
from margin.limits.periods import PeriodClock, period_bounds
from margin.limits.tokens import choices, prompt_tokens, requested_cap
from margin.metering import queries
from margin.metering.db import connect
from margin.metering.migrations import migrate
from margin.metering.pricing import PriceBook
from margin.types import RequestContext

log = logging.getLogger("margin.limits")

ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}
_KEY_PERIODS = ("day", "week", "month")

# scope, name, limit (USD, or requests), period, rule
Applicable = tuple[str, str, float, str, "BudgetRule | None"]


def usd_text(value: float) -> str:
    return f"{value:,.2f} USD" if value >= 1 else f"{value:.6g} USD"


class Budgets:
    def __init__(self, cfg: LimitsConfig, prices: PriceBook, models: Mapping[str, Any],
                 ledger_url: str, alerter: Alerter, *, keys_have_budgets: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.prices = prices
        self.models = models
        self.ledger_url = ledger_url
        self.alerter = alerter
        self.keys_have_budgets = keys_have_budgets
        self.clock = clock
        self.periods = PeriodClock(cfg.timezone)
        # scope -> name ("*" for every value) -> period -> unit -> rule
        self.rules: dict[str, dict[str, dict[str, dict[str, BudgetRule]]]] = {}
        for rule in cfg.budgets:
            unit = "usd" if rule.usd is not None else "requests"
            (self.rules.setdefault(rule.scope, {}).setdefault(rule.name, {})
             .setdefault(rule.period, {})[unit]) = rule
        self.baseline: dict[tuple[str, str, str, float, str], int] = {}
        self.active: dict[str, BudgetItem] = {}
        self.correction = PromptCorrection(cfg.correction_quantile, cfg.correction_window,
                                           cfg.correction_min_samples)
        self.alerted: set[tuple[str, float]] = set()
        # A route's model is unknown yet: its worst case is that of the dearest model.
        self._route_models = [m.name for m in models.values() if m.kind != "embeddings"]

    @property
    def enabled(self) -> bool:
        return bool(self.rules) or self.keys_have_budgets

    # -- which budgets apply -----------------------------------------------------------
    def applicable(self, ctx: RequestContext) -> list[Applicable]:
        """(scope, name, usd, period, rule) of every budget the request belongs to."""
        out: list[Applicable] = []
        key = ctx.key
        if ctx.key_id and key is not None and key.budget_usd:
            out.append(("key", ctx.key_id, key.budget_usd, key.budget_period or "month", None))
        for scope, value in (("user", ctx.user), ("team", ctx.team), ("feature", ctx.feature)):
            names = self.rules.get(scope)
            if not names or not value:
                continue
            specific = names.get(value)
            wildcard = names.get("*")
            chosen = ({p: {**wildcard.get(p, {}), **specific.get(p, {})}
                       for p in {*wildcard, *specific}} if wildcard and specific
                      else specific or wildcard or {})
            for period, rules in chosen.items():
                for rule in rules.values():
                    limit = rule.usd if rule.usd is not None else float(rule.requests or 0)
                    out.append((scope, value, limit, period, rule))
        return out

    def item(self, scope: str, name: str, limit: float, period: str, amount: int, now: float,
             rule: BudgetRule | None) -> BudgetItem:
        b = self.periods.bounds(period, now)
        requests = rule is not None and rule.requests is not None
        unit = "requests" if requests else "usd"
        return BudgetItem(
            id=f"{scope}:{name}:{period}:{b.label}" + (":requests" if requests else ""),
            scope=scope, name=name, period=period,
            limit_nusd=int(limit) if requests else to_nusd(limit),
            amount_nusd=1 if requests else amount,
            baseline_nusd=self.baseline.get((scope, name, period, b.start_s, unit), 0),
            expires_at_s=b.end_s + GRACE_S,
            action=rule.on_exhausted if rule else "reject",
            downgrade_to=rule.downgrade_to if rule else None, period_end_s=b.end_s,
            unit=unit)

    def items(self, ctx: RequestContext, budgets: Iterable[Applicable], now: float
              ) -> list[BudgetItem]:
        amount = self.worst_nusd(ctx)
        return [self.item(scope, name, limit, period, amount, now, rule)
                for scope, name, limit, period, rule in budgets]

    def completion_cap(self, ctx: RequestContext, model: str) -> int:
        """Completion tokens per choice a request to ``model`` may produce."""
        return (requested_cap(ctx.body) or self.prices.max_output_tokens(model)
                or self.cfg.default_max_tokens)

    def worst_tokens(self, ctx: RequestContext, model: str) -> tuple[int, int]:
        """(prompt, completion) tokens of the request's worst case on ``model``."""
        p = math.ceil(prompt_tokens(ctx) * self.correction.factor(model))
        if ctx.endpoint == "embeddings":
            return p, 0
        return p, self.completion_cap(ctx, model) * choices(ctx.body)

    def worst_nusd(self, ctx: RequestContext) -> int:
        """The most this request can cost, in nano-dollars, rounded up."""
        names = [ctx.model.name] if ctx.model is not None else self._route_models
        best = 0
        for n in names:
            p, c = self.worst_tokens(ctx, n)
            best = max(best, to_nusd(self.prices.price(n).cost_usd(p, c), round_up=True))
        return best

    def enforce_cap(self, ctx: RequestContext) -> None:
        """A request without a cap, to a model the catalogue knows no maximum for, is sent
        with ``default_max_tokens``: the reservation assumed it, so it must hold."""
        if ctx.endpoint == "embeddings" or requested_cap(ctx.body) is not None:
            return
        names = [ctx.model.name] if ctx.model is not None else self._route_models
        if any(self.prices.max_output_tokens(n) is None for n in names):
            ctx.body["max_tokens"] = self.cfg.default_max_tokens

    # -- after settlement: alerts --------------------------------------------------------
    def after_settle(self, items: Sequence[BudgetItem], spent: list[int]) -> None:
        for item, s in zip(items, spent):
            self.active[item.id] = item
            pct = s * 100.0 / item.limit_nusd
            for t in self.cfg.alerts.thresholds_pct:
                if pct + 1e-9 >= t:
                    self.alert(item, t, s)

    def alert(self, item: BudgetItem, threshold: float, spent_nusd: int,
              exhausted: bool = False) -> None:
        if (item.id, threshold) in self.alerted:
            return
        if len(self.alerted) > 100_000:
            self.alerted.clear()
        self.alerted.add((item.id, threshold))
        if item.unit == "requests":
            event = {"type": "budget_threshold", "budget": item.id, "scope": item.scope,
                     "name": item.name, "period": item.period, "threshold_pct": threshold,
                     "limit_requests": item.limit_nusd, "requests": spent_nusd,
                     "exhausted": exhausted,
                     "message": (f"{item.scope} '{item.name}' has made {spent_nusd} of its "
                                 f"{ADJECTIVE[item.period]} {item.limit_nusd} requests "
                                 f"(threshold {threshold:g} %)")}
            self.alerter.fire(f"budget:{item.id}:{threshold:g}",
                              max(item.expires_at_s - self.clock(), 3600.0), event)
            return
        limit_usd = item.limit_nusd / NANO
        spent_usd = spent_nusd / NANO
        event = {"type": "budget_threshold", "budget": item.id, "scope": item.scope,
                 "name": item.name, "period": item.period,
                 "period_start": item.id.rsplit(":", 1)[1], "threshold_pct": threshold,
                 "limit_usd": limit_usd, "spent_usd": round(spent_usd, 9),
                 "spent_pct": round(spent_usd * 100 / limit_usd, 2), "exhausted": exhausted,
                 "message": (f"{item.scope} '{item.name}' has used {usd_text(spent_usd)} of its "
                             f"{ADJECTIVE[item.period]} budget of {usd_text(limit_usd)} "
                             f"(threshold {threshold:g} %)")}
        ttl = max(item.expires_at_s - self.clock(), 3600.0)
        self.alerter.fire(f"budget:{item.id}:{threshold:g}", ttl, event)

    def alert_exhausted(self, item: BudgetItem, spent_nusd: int) -> None:
        """A refusal (or downgrade) is the top threshold's alert, even short of 100 %."""
        if self.cfg.alerts.thresholds_pct:
            self.alert(item, max(self.cfg.alerts.thresholds_pct), spent_nusd, exhausted=True)

    def refusal(self, ctx: RequestContext, item: BudgetItem, result: ReserveResult,
                items: list[BudgetItem], now: float) -> BudgetExceeded:
        i = items.index(item)
        spent, reserved = result.spent_nusd[i], result.reserved_nusd[i]
        self.alert_exhausted(item, spent)
        ctx.notes["budget_exceeded"] = item.id
        resets = dt.datetime.fromtimestamp(item.period_end_s, self.periods.tz).isoformat()
        if item.unit == "requests":
            return BudgetExceeded(
                f"Budget exceeded: {item.scope} '{item.name}' has made its "
                f"{item.limit_nusd} requests this {item.period} (including those in "
                f"progress). It resets at {resets}.",
                retry_after_s=max(item.period_end_s - now, 1.0),
                extra_headers={"x-margin-budget": item.id})
        left = max(item.limit_nusd - spent - reserved, 0) / NANO
        return BudgetExceeded(
            f"Budget exceeded: the {ADJECTIVE[item.period]} budget of {item.scope} "
            f"'{item.name}' ({usd_text(item.limit_nusd / NANO)}) has {usd_text(left)} left and "
            f"this request may cost up to {usd_text(item.amount_nusd / NANO)}. It resets at "
            f"{resets}.", retry_after_s=max(item.period_end_s - now, 1.0),
            extra_headers={"x-margin-budget": item.id})

    # -- the ledger's spend: counters' floor ---------------------------------------------
    def scopes_periods(self) -> set[tuple[str, str]]:
        out = {(scope, period) for scope, names in self.rules.items()
               for periods in names.values() for period in periods}
        if self.keys_have_budgets:
            out |= {("key", p) for p in _KEY_PERIODS}
        return out

    def _units(self, scope: str, period: str) -> set[str]:
        if scope == "key":
            return {"usd"}
        return {unit for names in [self.rules.get(scope, {})] for periods in names.values()
                for unit in periods.get(period, {})}

    @staticmethod
    def _spent(db: Any, scope: str, unit: str, window: "queries.Filters") -> dict[str, int]:
        """Spend (nano-USD) or admitted requests per value of ``scope`` in ``window``."""
        if unit == "requests":
            return queries.admitted_by(db, scope, window)
        return {v: to_nusd(cost) for v, cost in queries.cost_by(db, scope, window).items()}

    def ledger_spent(self, item: BudgetItem) -> int:
        """One budget's spend (or requests) in its period, read from the ledger now (worker
        thread), to rebuild a counter that was lost."""
        b = period_bounds(item.period, item.period_end_s - 1, self.periods.tz)
        db = connect(self.ledger_url)
        try:
            spent = self._spent(db, item.scope, item.unit, queries.Filters(
                b.start_s, b.end_s, **{item.scope: item.name}))
        finally:
            db.close()
        return spent.get(item.name, 0)

    def load_baselines(self, now_s: float, first: bool = False) -> None:
        """This period's spend per key/user/team/feature, from the ledger (worker thread)."""
        db = connect(self.ledger_url)
        try:
            if first:  # the ledger writer may not have created the tables yet
                migrate(db)
            fresh: dict[tuple[str, str, str, float, str], int] = {}
            for scope, period in sorted(self.scopes_periods()):
                b = period_bounds(period, now_s, self.periods.tz)
                window = queries.Filters(b.start_s, b.end_s)
                for unit in sorted(self._units(scope, period)):
                    for value, total in self._spent(db, scope, unit, window).items():
                        fresh[(scope, value, period, b.start_s, unit)] = total
            self.baseline = fresh
        finally:
            db.close()

    def baseline_of(self, item: BudgetItem) -> int:
        start = period_bounds(item.period, item.period_end_s - 1, self.periods.tz).start_s
        return self.baseline.get((item.scope, item.name, item.period, start, item.unit), 0)

    async def load_at_start(self) -> None:
        if not self.scopes_periods():
            return
        try:
            await asyncio.to_thread(self.load_baselines, self.clock(), True)
        except Exception as exc:  # the ledger may be down: budgets start from zero
            log.warning("budgets: cannot read spend from the ledger (%s); counting from "
                        "zero until it answers", type(exc).__name__)

    def live_periods(self, now_s: float) -> list[BudgetItem]:
        """Drop budget periods that ended; the rest are returned (to raise their floor)."""
        live = []
        for item_id, item in list(self.active.items()):
            if item.period_end_s <= now_s:
                del self.active[item_id]
            else:
                live.append(item)
        return live
