"""The admission stage's budgets on their own: which budgets apply, the worst case it
reserves, spend from the ledger at start and from other processes later, release on errors."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from margin.config import Settings
from margin.errors import BudgetExceeded, UpstreamError
from margin.types import Attempt, RequestContext, Response
from margin.gateway.stages.admission import AdmissionStage
from margin.limits.admission import Admission
from margin.limits.alerts import Alerter, MemoryLatch
from margin.limits.budget_policy import Budgets
from margin.limits.rate_policy import RateLimits
from margin.limits.budgets import to_nusd
from margin.metering.db import connect
from margin.metering.migrations import migrate
from margin.metering.pricing import PriceBook


def make_stage(tmp_path, budgets, **limits):
    settings = Settings.model_validate({
        "models": [{"name": "small", "provider": "openai", "api_base": "http://x/v1",
                    "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}],
        "ledger": {"url": str(tmp_path / "ledger.db")},
        "limits": {"budgets": budgets, "anomalies": {"enabled": False},
                   "default_max_tokens": 100, **limits}})
    models = {m.name: m for m in settings.models}
    prices = PriceBook(settings.models, settings.pricing)
    cfg = settings.limits
    budgets = Budgets(cfg, prices, models, settings.ledger.url,
                      Alerter(cfg.alerts, MemoryLatch()), keys_have_budgets=False)
    return AdmissionStage(cfg, Admission(cfg), RateLimits(cfg, budgets.worst_tokens), budgets,
                          prices, models), settings


def ledger_spend(url, team, usd, ts=None):
    db = connect(url)
    migrate(db)
    db.execute("INSERT INTO requests (id, ts, endpoint, status, team, cost_usd) "
               "VALUES (?, ?, 'chat', 200, ?, ?)", (uuid.uuid4().hex, ts or time.time(), team,
                                                   usd))
    db.commit()
    db.close()


def ctx_for(team="research", user="u1", feature=None, prompt="hi", max_tokens=None):
    body = {"model": "small", "messages": [{"role": "user", "content": prompt}]}
    if max_tokens:
        body["max_tokens"] = max_tokens
    ctx = RequestContext(uuid.uuid4().hex, "chat", body, {})
    ctx.team, ctx.user, ctx.feature, ctx.requested_model = team, user, feature, "small"
    return ctx


async def answer(ctx):
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 10, 10
    ctx.served_model = "small"
    ctx.attempts.append(Attempt("small", "x", 200, 1.0, prompt_tokens=10, completion_tokens=10))
    return Response(200, payload={})


async def fail(ctx):
    raise UpstreamError("down")


def test_named_budget_overrides_wildcard_and_worst_case_uses_the_cap(tmp_path):
    stage, settings = make_stage(tmp_path, [
        {"scope": "team", "name": "*", "usd": 1.0, "period": "day"},
        {"scope": "team", "name": "research", "usd": 5.0, "period": "day"},
        {"scope": "team", "name": "research", "usd": 50.0, "period": "month"}])
    ctx = ctx_for()
    ctx.model = settings.models[0]
    found = {(s, n, p): usd for s, n, usd, p, _ in stage.budgets.applicable(ctx)}
    assert found == {("team", "research", "day"): 5.0, ("team", "research", "month"): 50.0}
    other = ctx_for(team="ops")
    assert [(usd, p) for _, _, usd, p, _ in stage.budgets.applicable(other)] == [(1.0, "day")]
    # prompt "hi": 1 + 6 framing + 3 priming tokens; no max_tokens: the 100-token default cap
    assert stage.budgets.worst_nusd(ctx) == to_nusd(10 * 1e-6 + 100 * 2e-6)
    assert stage.budgets.worst_nusd(ctx_for(max_tokens=10)) == to_nusd(10e-6 + 10 * 2e-6)


def test_spend_in_the_ledger_counts_and_errors_release(tmp_path):
    stage, settings = make_stage(tmp_path, [
        {"scope": "team", "name": "research", "usd": 100e-6, "period": "month"}])
    ledger_spend(settings.ledger.url, "research", 60e-6)
    ledger_spend(settings.ledger.url, "research", 50e-6, ts=time.time() - 40 * 86400)  # old

    async def main():
        await stage.start()
        ctx = ctx_for(max_tokens=10)
        ctx.model = settings.models[0]
        with pytest.raises(UpstreamError):
            await stage(ctx, fail)  # reserved 30e-6, released on the error
        ok = ctx_for(max_tokens=10)
        ok.model = settings.models[0]
        await stage(ok, answer)  # 60 + 30 (10 prompt + 10 completion tokens) = 90e-6
        item = stage.budgets.items(ok, stage.budgets.applicable(ok), time.time())[0]
        spent = stage.admission.budgets.spent(item.id)
        # The ledger writer records our request; another replica (without Redis) spent
        # more meanwhile: the ledger sync raises our counter to what the ledger shows.
        ledger_spend(settings.ledger.url, "research", 30e-6)
        ledger_spend(settings.ledger.url, "research", 25e-6)
        await stage._sync()
        after_sync = stage.admission.budgets.spent(item.id)
        refused = ctx_for(max_tokens=10)
        refused.model = settings.models[0]
        with pytest.raises(BudgetExceeded, match="team 'research'"):
            await stage(refused, answer)
        await stage.aclose()
        return spent, after_sync

    spent, after_sync = asyncio.run(main())
    assert spent == to_nusd(90e-6)
    assert after_sync == to_nusd(60e-6 + 25e-6 + 30e-6)


def test_a_cost_above_its_reservation_is_charged_counted_and_reported(tmp_path):
    from margin.limits.spend import spend_by
    from margin.types import Usage

    stage, settings = make_stage(
        tmp_path, [{"scope": "team", "name": "research", "usd": 1.0, "period": "day"}],
        users={"u1": {"tpm": 100_000}})

    async def billed_more(ctx):
        # A provider counting far more prompt than any bound (a hidden system prompt).
        ctx.usage = Usage(prompt_tokens=5000, completion_tokens=10)
        ctx.served_model = "small"
        ctx.attempts.append(Attempt("small", "x", 200, 1.0, prompt_tokens=5000,
                                    completion_tokens=10))
        return Response(200, payload={})

    async def main():
        await stage.start()
        ctx = ctx_for(max_tokens=10)
        ctx.model = settings.models[0]
        await stage(ctx, billed_more)
        item = stage.budgets.items(ctx, stage.budgets.applicable(ctx), time.time())[0]
        await stage.aclose()
        return ctx, stage.admission.budgets.spent(item.id), stage.admission.stats

    ctx, spent, stats = asyncio.run(main())
    cost = 5000 * 1e-6 + 10 * 2e-6
    assert ctx.reserved_usd == pytest.approx(10e-6 + 10 * 2e-6)
    assert spent == to_nusd(cost)  # charged in full
    assert stats.overrun_requests == 1
    assert stats.overrun_usd == pytest.approx(cost - ctx.reserved_usd)
    assert stats.tpm_overrun_tokens == 5010 - (10 + 10)
    metrics = b"".join(m.name.encode() for m in stats.collect())
    assert b"margin_budget_overrun_usd" in metrics
    # The ledger row keeps the reservation, and margin spend sums what went over.
    from margin.gateway.record import ledger_row
    from margin.metering.db import connect as db_connect
    from margin.metering import rollups
    from margin.metering.ledger import COLUMNS
    row = ledger_row(ctx, log_content=False)
    db = db_connect(settings.ledger.url)
    migrate(db)
    db.execute(f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES "
               f"({', '.join('?' for _ in COLUMNS)})", tuple(row.get(c) for c in COLUMNS))
    db.commit()
    rollups.rebuild(db)  # the row went in by SQL, not through the writer that keeps rollups
    report = spend_by(db, "team")
    db.close()
    assert report["total"]["overrun_usd"] == pytest.approx(cost - ctx.reserved_usd, abs=1e-8)
