"""Budget stage: reserve the worst case before a request, settle the real cost after.

The budgets a request belongs to: its key's own budget, and the configured budgets of its
user, team and feature tag (a named budget overrides a ``"*"`` one for the same period).
Worst case = estimated prompt tokens + ``max_tokens`` (or ``default_max_tokens``) at the
model's prices. All its budgets reserve it atomically or it is refused: 429 naming the
budget, or — for a budget with ``on_exhausted: downgrade`` — served by the cheaper model
(``x-margin-model`` says which, ``x-margin-budget`` says why). After the answer (after the
stream, for streams; on errors too) the reservation becomes the real cost, and crossing a
threshold (50/80/100 %) fires an alert once per period. Counters start from the ledger's
spend for the current period, so a restart forgets nothing.

A self-hosted model is priced by the compute time it spends, unknown beforehand: its
requests reserve nothing and are refused only once the budget is spent.

The stage also runs the hourly cost-anomaly check (a background task).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, AsyncIterator, Sequence

from margin.errors import BudgetExceeded
from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler
from margin.gateway.record import finalize_cost
from margin.limits.admission import Admission, Outcome, shared_admission
from margin.limits.alerts import Alerter, DatabaseLatch, RedisLatch
from margin.limits.budgets import GRACE_S, NANO, BudgetItem, ReserveResult, to_nusd
from margin.limits.config import BudgetRule, LimitsConfig
from margin.limits.periods import PeriodClock, period_bounds
from margin.limits.ratelimit import Limit, refusal
from margin.limits.runtime import (PROMPT_NOTE, max_completion_tokens, prompt_tokens,
                                   shared_redis)
from margin.limits.watch import AnomalyWatcher, every
from margin.metering.db import connect
from margin.metering.migrations import migrate

log = logging.getLogger("margin.limits")

_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}
_COLUMN = {"key": "key_id", "user": "user_id", "team": "team", "feature": "feature"}


def _usd(value: float) -> str:
    return f"{value:,.2f} USD" if value >= 1 else f"{value:.6g} USD"


class BudgetStage:
    name = "budget"

    def __init__(self, gateway: Any, cfg: LimitsConfig, admission: Admission,
                 verifier: Any = None, redis: Any = None) -> None:
        self.gw = gateway
        self.cfg = cfg
        self.admission = admission
        admission.joined = True  # the rate-limit stage in front hands its limits to us
        self.verifier = verifier
        self.db_url = gateway.settings.ledger.url
        self.periods = PeriodClock(cfg.timezone)
        latch = (RedisLatch(redis, cfg.redis_prefix) if redis is not None
                 else DatabaseLatch(self.db_url))
        self.alerter = Alerter(cfg.alerts, latch)
        # scope -> name ("*" for every value) -> period -> rule
        self.rules: dict[str, dict[str, dict[str, BudgetRule]]] = {}
        for rule in cfg.budgets:
            self.rules.setdefault(rule.scope, {}).setdefault(rule.name, {})[rule.period] = rule
        self.baseline: dict[tuple[str, str, str, float], int] = {}
        self.active: dict[str, BudgetItem] = {}
        self.alerted: set[tuple[str, float]] = set()
        self.watcher = (AnomalyWatcher(self.db_url, cfg.anomalies, self.alerter)
                        if cfg.anomalies.enabled else None)
        self._loops: list[asyncio.Task[None]] = []
        # A route's model is unknown yet: its worst case is that of the dearest model.
        self._route_models = [m.name for m in gateway.models.values() if m.kind != "embeddings"]

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._scopes_periods():
            try:
                await asyncio.to_thread(self._load_baselines, time.time(), True)
            except Exception as exc:  # the ledger may be down: budgets start from zero
                log.warning("budgets: cannot read spend from the ledger (%s); counting from "
                            "zero until it answers", type(exc).__name__)
            self._loops.append(loop.create_task(every(self.cfg.ledger_sync_s, 0.0, self._sync,
                                                      "budget ledger sync")))
        if self.watcher is not None:
            self._loops.append(loop.create_task(self.watcher.run()))

    async def aclose(self) -> None:
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self.alerter.aclose()

    def _scopes_periods(self) -> set[tuple[str, str]]:
        out = {(scope, period) for scope, names in self.rules.items()
               for periods in names.values() for period in periods}
        if self.verifier is not None:
            out |= {("key", p) for p in ("day", "week", "month")}
        return out

    def _load_baselines(self, now_s: float, first: bool = False) -> None:
        """This period's spend per key/user/team/feature, from the ledger (worker thread)."""
        db = connect(self.db_url)
        try:
            if first:  # the ledger writer may not have created the tables yet
                migrate(db)
            fresh: dict[tuple[str, str, str, float], int] = {}
            for scope, period in sorted(self._scopes_periods()):
                b = period_bounds(period, now_s, self.periods.tz)
                col = _COLUMN[scope]
                for value, cost in db.query(
                        f"SELECT {col}, SUM(cost_usd) FROM requests WHERE ts >= ? AND ts < ? "
                        f"AND {col} IS NOT NULL GROUP BY {col}", (b.start_s, b.end_s)):
                    fresh[(scope, str(value), period, b.start_s)] = to_nusd(float(cost or 0.0))
            self.baseline = fresh
        finally:
            db.close()

    async def _sync(self) -> None:
        now = time.time()
        await asyncio.to_thread(self._load_baselines, now)
        for item_id, item in list(self.active.items()):
            if item.period_end_s <= now:
                del self.active[item_id]
                continue
            floor = self._baseline_of(item)
            if floor:
                await self.admission.raise_floor(item, floor)

    def _baseline_of(self, item: BudgetItem) -> int:
        start = period_bounds(item.period, item.period_end_s - 1, self.periods.tz).start_s
        return self.baseline.get((item.scope, item.name, item.period, start), 0)

    # -- which budgets apply -------------------------------------------------------
    def _item(self, scope: str, name: str, usd: float, period: str, amount: int, now: float,
              rule: BudgetRule | None) -> BudgetItem:
        b = self.periods.bounds(period, now)
        return BudgetItem(
            id=f"{scope}:{name}:{period}:{b.label}", scope=scope, name=name, period=period,
            limit_nusd=to_nusd(usd), amount_nusd=amount,
            baseline_nusd=self.baseline.get((scope, name, period, b.start_s), 0),
            expires_at_s=b.end_s + GRACE_S,
            action=rule.on_exhausted if rule else "reject",
            downgrade_to=rule.downgrade_to if rule else None, period_end_s=b.end_s)

    def _budgets(self, ctx: RequestContext) -> list[tuple[str, str, float, str,
                                                          BudgetRule | None]]:
        """(scope, name, usd, period, rule) of every budget the request belongs to."""
        out: list[tuple[str, str, float, str, BudgetRule | None]] = []
        if ctx.key_id and self.verifier is not None:
            record = self.verifier.cached(ctx.key_id)
            if record is not None and record.budget_usd:
                out.append(("key", ctx.key_id, record.budget_usd,
                            record.budget_period or "month", None))
        for scope, value in (("user", ctx.user), ("team", ctx.team), ("feature", ctx.feature)):
            names = self.rules.get(scope)
            if not names or not value:
                continue
            specific = names.get(value)
            wildcard = names.get("*")
            chosen = ({**wildcard, **specific} if wildcard and specific
                      else specific or wildcard or {})
            for period, rule in chosen.items():
                out.append((scope, value, rule.usd, period, rule))
        return out

    def _items(self, ctx: RequestContext, amount: int, now: float) -> list[BudgetItem]:
        return [self._item(scope, name, usd, period, amount, now, rule)
                for scope, name, usd, period, rule in self._budgets(ctx)]

    def _worst_nusd(self, ctx: RequestContext) -> int:
        p = prompt_tokens(ctx)
        c = max_completion_tokens(ctx, self.cfg.default_max_tokens)
        names = [ctx.model.name] if ctx.model is not None else self._route_models
        prices = self.gw.prices
        return max((to_nusd(prices.price(n).cost_usd(p, c), round_up=True) for n in names),
                   default=0)

    # -- admission / settlement ----------------------------------------------------
    def _settle(self, outcome: Outcome, items: list[BudgetItem], rid: str,
                cost_usd: float) -> None:
        self.admission.settle(outcome.shared, items, rid, to_nusd(cost_usd), self._after_settle)

    def _after_settle(self, items: Sequence[BudgetItem], spent: list[int]) -> None:
        for item, s in zip(items, spent):
            self.active[item.id] = item
            pct = s * 100.0 / item.limit_nusd
            for t in self.cfg.alerts.thresholds_pct:
                if pct + 1e-9 >= t:
                    self._alert(item, t, s)

    def _alert(self, item: BudgetItem, threshold: float, spent_nusd: int,
               exhausted: bool = False) -> None:
        if (item.id, threshold) in self.alerted:
            return
        if len(self.alerted) > 100_000:
            self.alerted.clear()
        self.alerted.add((item.id, threshold))
        limit_usd = item.limit_nusd / NANO
        spent_usd = spent_nusd / NANO
        event = {"type": "budget_threshold", "budget": item.id, "scope": item.scope,
                 "name": item.name, "period": item.period,
                 "period_start": item.id.rsplit(":", 1)[1], "threshold_pct": threshold,
                 "limit_usd": limit_usd, "spent_usd": round(spent_usd, 9),
                 "spent_pct": round(spent_usd * 100 / limit_usd, 2), "exhausted": exhausted,
                 "message": (f"{item.scope} '{item.name}' has used {_usd(spent_usd)} of its "
                             f"{_ADJECTIVE[item.period]} budget of {_usd(limit_usd)} "
                             f"(threshold {threshold:g} %)")}
        ttl = max(item.expires_at_s - time.time(), 3600.0)
        self.alerter.fire(f"budget:{item.id}:{threshold:g}", ttl, event)

    def _alert_exhausted(self, item: BudgetItem, spent_nusd: int) -> None:
        """A refusal (or downgrade) is the top threshold's alert, even short of 100 %."""
        if self.cfg.alerts.thresholds_pct:
            self._alert(item, max(self.cfg.alerts.thresholds_pct), spent_nusd, exhausted=True)

    def _refuse(self, ctx: RequestContext, item: BudgetItem, result: ReserveResult,
                items: list[BudgetItem], now: float) -> BudgetExceeded:
        i = items.index(item)
        spent, reserved = result.spent_nusd[i], result.reserved_nusd[i]
        self._alert_exhausted(item, spent)
        ctx.notes["budget_exceeded"] = item.id
        left = max(item.limit_nusd - spent - reserved, 0) / NANO
        resets = dt.datetime.fromtimestamp(item.period_end_s, self.periods.tz).isoformat()
        return BudgetExceeded(
            f"Budget exceeded: the {_ADJECTIVE[item.period]} budget of {item.scope} "
            f"'{item.name}' ({_usd(item.limit_nusd / NANO)}) has {_usd(left)} left and "
            f"this request may cost up to {_usd(item.amount_nusd / NANO)}. It resets at "
            f"{resets}.", retry_after_s=max(item.period_end_s - now, 1.0),
            extra_headers={"x-margin-budget": item.id})

    async def _exhausted(self, ctx: RequestContext, limits: Sequence[Limit],
                         items: list[BudgetItem], outcome: Outcome,
                         now: float) -> tuple[list[BudgetItem], Outcome]:
        result = outcome.budget
        assert result is not None and result.denied is not None
        denied = result.denied
        target = self.gw.models.get(denied.downgrade_to) if denied.action == "downgrade" else None
        if (target is None or target.kind == "embeddings" or ctx.endpoint == "embeddings"
                or (ctx.model is not None and ctx.model.name == target.name)):
            raise self._refuse(ctx, denied, result, items, now)
        before = ctx.model.name if ctx.model is not None else (ctx.route or ctx.requested_model)
        ctx.model, ctx.served_model, ctx.provider, ctx.route = (target, target.name,
                                                                target.provider, None)
        amount = self._worst_nusd(ctx)
        # The downgrade is the remedy for the exhausted budgets that ask for it; every
        # other budget still has to accept the (smaller) reservation.
        cheaper = [dataclasses.replace(it, amount_nusd=amount, force=it.action == "downgrade")
                   for it in items]
        again = await self.admission.admit(ctx.request_id, limits, cheaper)
        self._check_rate(ctx, limits, again)
        if again.budget is not None and not again.budget.ok:
            assert again.budget.denied is not None
            raise self._refuse(ctx, again.budget.denied, again.budget, cheaper, now)
        self._alert_exhausted(denied, result.spent_nusd[items.index(denied)])
        ctx.notes["budget_downgrade"] = {"from": before, "to": target.name,
                                         "budget": denied.id}
        ctx.notes.setdefault("_headers", {})["x-margin-budget"] = f"downgraded:{denied.id}"
        return cheaper, again

    def _check_rate(self, ctx: RequestContext, limits: Sequence[Limit],
                    outcome: Outcome) -> None:
        """Hand the outcome to the rate-limit stage; refuse if its limits did."""
        if limits:
            self.admission.put_outcome(ctx.request_id, outcome)
        rate = outcome.rate
        if rate is not None and not rate.allowed:
            assert rate.denied is not None
            ctx.notes["rate_limited"] = rate.denied.label
            raise refusal(rate)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        rid = ctx.request_id
        limits = self.admission.take_deferred(rid)
        if not self.rules and not ctx.key_id and not limits:
            return await call_next(ctx)
        try:
            now = time.time()
            budgets = self._budgets(ctx)
            if not budgets and not limits:
                return await call_next(ctx)
            amount = self._worst_nusd(ctx) if budgets else 0
            items = [self._item(scope, name, usd, period, amount, now, rule)
                     for scope, name, usd, period, rule in budgets]
            outcome = await self.admission.admit(rid, limits, items)
            self._check_rate(ctx, limits, outcome)
            if outcome.budget is not None and not outcome.budget.ok:
                items, outcome = await self._exhausted(ctx, limits, items, outcome, now)
            if not items:
                return await call_next(ctx)
            try:
                response = await call_next(ctx)
            except BaseException:
                self._settle(outcome, items, rid, self._cost(ctx))
                raise
            if response.stream is not None:
                response.stream = self._after_stream(ctx, response.stream, outcome, items)
            else:
                self._settle(outcome, items, rid, self._cost(ctx))
            return response
        finally:
            ctx.notes.pop(PROMPT_NOTE, None)

    def _cost(self, ctx: RequestContext) -> float:
        # The same pricing the ledger row gets (the app prices the request again later).
        try:
            finalize_cost(ctx, self.gw.prices)
        except Exception:
            log.exception("budgets: cannot price request %s", ctx.request_id)
            return 0.0
        return ctx.cost_usd

    async def _after_stream(self, ctx: RequestContext, stream: AsyncIterator[dict[str, Any]],
                            outcome: Outcome, items: list[BudgetItem]
                            ) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            self._settle(outcome, items, ctx.request_id, self._cost(ctx))


def build(gateway: Any) -> BudgetStage | None:
    settings = gateway.settings
    cfg: LimitsConfig = settings.limits
    verifier = getattr(gateway, "key_verifier", None)
    if not cfg.budgets and verifier is None and not cfg.anomalies.enabled:
        return None
    url = cfg.redis_url or settings.redis_url
    redis = shared_redis(gateway, url, cfg.redis_timeout_s) if url else None
    stage = BudgetStage(gateway, cfg, shared_admission(gateway, cfg, redis), verifier, redis)
    gateway.on_close(stage.aclose)
    gateway.budgets = stage
    return stage
