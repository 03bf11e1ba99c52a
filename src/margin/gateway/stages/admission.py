"""Admission stage: rate limits and budgets, admitted together before a request runs and
settled after it.

Two policies say what applies to a request: ``RateLimits`` (requests and tokens per minute
per key, user, team and model) and ``Budgets`` (the worst-case cost reserved on each budget
of its key, user, team and feature). ``Admission`` checks and charges both in one atomic
step — one Lua call with Redis, one synchronous step in process — so a request refused by
either is charged to neither.

Refused: 429 with ``Retry-After`` naming the limit or the budget; or, for a budget with
``on_exhausted: downgrade``, served by the cheaper model (``x-margin-model`` says which,
``x-margin-budget`` says why). Every answer carries OpenAI's ``x-ratelimit-*`` headers.
After the answer (after the stream, for streams; on errors too) token charges become the
real usage (refunded on errors and cache hits) and reservations the real cost. The
request's admission state rides on ``ctx.admission``.

What is reserved is a worst case (``Budgets.worst_tokens``): a bound on the prompt over
everything a provider bills, times the model's learned correction, plus the completion cap
times the choices; a request with no cap, to a model without a known maximum, is sent with
``default_max_tokens``. Token limits are charged the same worst case up front. A settled
cost (or usage) above what was reserved is still charged, counted in
``margin_budget_overrun_usd`` (``margin_tpm_overrun_tokens``) and recorded on the ledger
row (``reserved_usd``) for ``margin spend``.

The budget counters' floor — the period's spend recorded in the ledger — is re-read every
``ledger_sync_s`` by this stage's background loop; a heartbeat loop keeps the replicas'
view of Redis (``margin.limits.admission``) and shares the learned correction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from margin.errors import Overloaded
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.limits.admission import Admission, Outcome
from margin.limits.budget_policy import Budgets
from margin.limits.budgets import NANO, BudgetItem, to_nusd
from margin.limits.config import LimitsConfig
from margin.limits.rate_policy import RateLimits
from margin.limits.ratelimit import Limit, headers, refusal
from margin.limits.tokens import prompt_tokens
from margin.limits.watch import every
from margin.metering.charge import finalize_cost
from margin.metering.pricing import PriceBook
from margin.types import RequestContext, Response

log = logging.getLogger("margin.limits")

_FREE = ("exact", "semantic")  # cache hits consume no upstream tokens
CORRECTION_SYNC_S = 10.0


@dataclass(slots=True)
class AdmissionState:
    """What the admission stage holds for one request until it is settled."""

    outcome: Outcome
    limits: Sequence[Limit]
    items: list[BudgetItem]
    token_keys: list[str]   # the token limits charged
    charged_tokens: int     # what they were charged up front
    bound_tokens: int = 0   # the prompt bound (uncorrected), to learn the correction from


class AdmissionStage(Stage):
    name = "admission"

    def __init__(self, cfg: LimitsConfig, admission: Admission, rates: RateLimits,
                 budgets: Budgets, prices: PriceBook, models: Any) -> None:
        self.cfg = cfg
        self.admission = admission
        self.rates = rates
        self.budgets = budgets
        self.prices = prices
        self.models = models
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.budgets.scopes_periods():
            await self.budgets.load_at_start()
            self._tasks.append(loop.create_task(
                every(self.cfg.ledger_sync_s, 0.0, self._sync, "budget ledger sync")))
        if self.admission.redis is not None:
            await self.admission.resync()
            await self.admission.heartbeat()
        self._tasks.append(loop.create_task(self._beat()))

    async def _beat(self) -> None:
        # The correction's samples travel less often than the heartbeat: they change slowly.
        every_n = max(1, round(CORRECTION_SYNC_S / self.cfg.heartbeat_s))
        beats = 0
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            beats += 1
            try:
                await self.admission.heartbeat()
                if beats % every_n == 0:
                    await self._share_correction()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive one bad beat; it is logged
                log.exception("limits heartbeat failed")

    async def _share_correction(self) -> None:
        adm = self.admission
        if adm.redis is None or adm.in_fallback:
            self.budgets.correction.refresh_local()
            return
        try:
            await self.budgets.correction.sync(adm.redis, self.cfg.redis_prefix)
        except Exception as exc:  # samples stay queued for the next beat
            log.debug("correction sync failed: %s", exc)
            self.budgets.correction.refresh_local()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.admission.aclose()

    async def _sync(self) -> None:
        now = self.budgets.clock()
        await asyncio.to_thread(self.budgets.load_baselines, now)
        for item in self.budgets.live_periods(now):
            floor = self.budgets.baseline_of(item)
            if floor:
                await self.admission.raise_floor(item, floor)

    # -- the request ---------------------------------------------------------------
    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        limits = self.rates.limits(ctx)
        budgets = self.budgets.applicable(ctx)
        if not limits and not budgets:
            return await call_next(ctx)
        now = self.budgets.clock()
        self.budgets.enforce_cap(ctx)
        items = self.budgets.items(ctx, budgets, now) if budgets else []
        try:
            outcome = await self.admission.admit(ctx.request_id, limits, items)
        except Overloaded:
            ctx.notes["limits_unavailable"] = True
            raise
        self._check_rate(ctx, outcome)
        if outcome.budget is not None and not outcome.budget.ok:
            items, outcome = await self._exhausted(ctx, limits, items, outcome, now)
        token_keys = [lim.key for lim in limits if lim.kind == "tokens"]
        charged = next((lim.cost for lim in limits if lim.kind == "tokens"), 0)
        state = ctx.admission = AdmissionState(outcome, limits, items, token_keys, charged,
                                               prompt_tokens(ctx))
        usd = [it.amount_nusd for it in items if it.unit == "usd"]
        if usd:
            ctx.reserved_usd = max(usd) / NANO
        if outcome.rate is not None:
            ctx.response_headers.update(headers(outcome.rate.states))
        try:
            response = await call_next(ctx)
        except BaseException:
            self._settle(ctx, state, failed=True)
            raise
        if response.stream is not None:
            response.stream = self._after_stream(ctx, response.stream, state)
        else:
            self._settle(ctx, state, failed=response.status >= 400 or ctx.status >= 400)
        return response

    def _check_rate(self, ctx: RequestContext, outcome: Outcome) -> None:
        rate = outcome.rate
        if rate is not None and not rate.allowed:
            assert rate.denied is not None
            ctx.notes["rate_limited"] = rate.denied.label
            raise refusal(rate)

    async def _exhausted(self, ctx: RequestContext, limits: Sequence[Limit],
                         items: list[BudgetItem], outcome: Outcome,
                         now: float) -> tuple[list[BudgetItem], Outcome]:
        """A budget refused the request: downgrade it when that budget says so, or refuse."""
        result = outcome.budget
        assert result is not None and result.denied is not None
        denied = result.denied
        target = self.models.get(denied.downgrade_to) if denied.action == "downgrade" else None
        if (target is None or target.kind == "embeddings" or ctx.endpoint == "embeddings"
                or (ctx.model is not None and ctx.model.name == target.name)):
            raise self.budgets.refusal(ctx, denied, result, items, now)
        before = ctx.model.name if ctx.model is not None else (ctx.route or ctx.requested_model)
        ctx.model, ctx.served_model, ctx.provider, ctx.route = (target, target.name,
                                                                target.provider, None)
        self.budgets.enforce_cap(ctx)
        amount = self.budgets.worst_nusd(ctx)
        # The downgrade is the remedy for the exhausted budgets that ask for it; every
        # other budget still has to accept the (smaller) reservation.
        cheaper = [dataclasses.replace(it, amount_nusd=amount, force=it.action == "downgrade")
                   for it in items]
        again = await self.admission.admit(ctx.request_id, limits, cheaper)
        self._check_rate(ctx, again)
        if again.budget is not None and not again.budget.ok:
            assert again.budget.denied is not None
            raise self.budgets.refusal(ctx, again.budget.denied, again.budget, cheaper, now)
        self.budgets.alert_exhausted(denied, result.spent_nusd[items.index(denied)])
        ctx.notes["budget_downgrade"] = {"from": before, "to": target.name,
                                         "budget": denied.id}
        ctx.response_headers["x-margin-budget"] = f"downgraded:{denied.id}"
        return cheaper, again

    # -- after the request -----------------------------------------------------------
    def _settle(self, ctx: RequestContext, state: AdmissionState, failed: bool) -> None:
        outcome = state.outcome
        u = ctx.usage
        served = not failed and ctx.cache not in _FREE
        if (served and not u.estimated and u.prompt_tokens and ctx.served_model
                and ctx.endpoint in ("chat", "completions")):
            self.budgets.correction.observe(ctx.served_model, u.prompt_tokens,
                                            state.bound_tokens)
        stats = self.admission.stats
        if state.token_keys:
            used = u.prompt_tokens + u.completion_tokens if served else 0
            if used > state.charged_tokens:
                stats.tpm_overrun_tokens += used - state.charged_tokens
                stats.tpm_overrun_requests += 1
            self.admission.adjust(outcome.shared, state.token_keys, ctx.request_id,
                                  used - state.charged_tokens)
        if state.items:
            actual = to_nusd(self._cost(ctx))
            reserved = max((it.amount_nusd for it in state.items if it.unit == "usd"),
                           default=None)
            if reserved is not None and actual > reserved:
                stats.overrun_usd += (actual - reserved) / NANO
                stats.overrun_requests += 1
                log.warning("budgets: request %s cost %.9f USD, above the %.9f USD "
                            "reserved for it (charged all the same)", ctx.request_id,
                            actual / NANO, reserved / NANO)
            self.admission.settle(outcome.shared, state.items, ctx.request_id, actual,
                                  self.budgets.after_settle)

    def _cost(self, ctx: RequestContext) -> float:
        # The same pricing the ledger row gets (the app prices the request again later).
        try:
            finalize_cost(ctx, self.prices)
        except Exception:
            log.exception("budgets: cannot price request %s", ctx.request_id)
            return 0.0
        return ctx.cost_usd

    async def _after_stream(self, ctx: RequestContext, stream: AsyncIterator[dict[str, Any]],
                            state: AdmissionState) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            # Tokens streamed before a failure were still generated: count what was used.
            self._settle(ctx, state, failed=False)


def build(cfg: LimitsConfig, services: Services) -> AdmissionStage | None:
    keys_have_limits = services.keys is not None
    budgets = Budgets(cfg, services.prices, services.models, services.ledger_url,
                      services.alerter, keys_have_budgets=keys_have_limits,
                      clock=services.clock)
    if not cfg.has_rate_limits and not budgets.enabled:
        return None
    redis = services.redis.client(cfg.redis_url, cfg.redis_timeout_s) if cfg.redis_url else None
    admission = Admission(cfg, redis, budgets.ledger_spent if budgets.enabled else None)
    services.metrics.registry.register(admission.stats)
    rates = RateLimits(cfg, budgets.worst_tokens)
    return AdmissionStage(cfg, admission, rates, budgets, services.prices, services.models)
