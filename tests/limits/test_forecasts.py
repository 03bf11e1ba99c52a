"""Budget exhaustion and capacity alerts from ledgers with a known future: the alert fires
once, names the right date, and ordinary daily peaks raise nothing. The ledgers are
written by the real writer; alerts go through the real Alerter to a real webhook."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid
from typing import Any

import numpy as np
import orjson
import pytest

from margin.config import LedgerConfig
from margin.limits.alerts import Alerter, DatabaseLatch
from margin.limits.config import AlertConfig, BudgetRule, ForecastAlertConfig, ModelCapacity
from margin.limits.forecasts import monthly_growth, project_budget
from margin.limits.projections import ForecastWatcher
from margin.metering.ledger import LedgerWriter
from tests.conftest import ThreadServer

UTC = dt.timezone.utc
NOV_1 = dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()
DAY = 86_400.0


class Webhook:
    """Records every JSON POST it gets."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.events.append(orjson.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _write(url: str, rows: list[dict[str, Any]]) -> None:
    w = LedgerWriter(LedgerConfig(url=url, journal=False, batch_size=5000))
    w.start()
    for r in rows:
        w.submit(r)
    w.close()


def _row(ts: float, **fields: Any) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "ts": ts, "endpoint": "chat", "status": 200,
            "requested_model": fields.get("model", "small"), **fields}


def steady_spend_rows(start_s: float, end_s: float, usd_per_day: float) -> list[dict[str, Any]]:
    """Team "core" spends ``usd_per_day`` every day, in a working-hours cycle."""
    shape = np.array([0.2 + max(0.0, math.sin(math.pi * (h - 7) / 12)) for h in range(24)])
    shape /= shape.sum()
    rows = []
    t = start_s
    while t < end_s:
        hour = int(t // 3600) % 24
        per_request = usd_per_day * shape[hour] / 4
        for k in range(4):
            rows.append(_row(t + 600 * k + 30, team="core", user_id="ann", cost_usd=per_request))
        t += 3600
    return rows


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    return str(tmp_path / "f.db") if request.param == "sqlite" else \
        request.getfixturevalue("pg_url")


def test_a_budget_that_runs_out_on_day_20_alerts_once_and_names_the_date(url):
    # $10 a day against $200 a month: spent out at the end of November 20.
    now = NOV_1 + 9.5 * DAY                     # November 10, noon
    _write(url, steady_spend_rows(NOV_1 - 31 * DAY, now, 10.0))
    hook = Webhook()
    server = ThreadServer(hook).start()
    try:
        alerter = Alerter(AlertConfig(webhook_url=server.url + "/hook"), DatabaseLatch(url))
        clock = [now]
        watcher = ForecastWatcher(
            url, ForecastAlertConfig(), [BudgetRule(scope="team", name="core", usd=200,
                                                   period="month")],
            {}, "UTC", alerter, keys=lambda db: [], clock=lambda: clock[0])

        async def run() -> list[Any]:
            first = await watcher.check()
            clock[0] += 3 * 3600                # the next checks, later the same day
            await watcher.check()
            clock[0] += 3600
            await watcher.check()
            await alerter.drain()
            await alerter.aclose()
            return first
        found = asyncio.run(run())
    finally:
        server.stop()
    expected = NOV_1 + 20 * DAY                 # November 21, 00:00: day 20 is spent
    assert [a.kind for a in found] == ["budget_exhaustion"]
    assert abs(found[0].predicted_at - expected) < DAY
    assert len(hook.events) == 1, hook.events   # once per period, however often checked
    event = hook.events[0]
    assert event["type"] == "budget_exhaustion" and event["scope"] == "team:core"
    assert abs(event["predicted_at"] - expected) < DAY
    named = dt.datetime.fromtimestamp(event["predicted_at"], UTC).date()
    assert named.isoformat() in event["message"]
    assert named in (dt.date(2026, 11, 20), dt.date(2026, 11, 21))


def test_a_budget_on_track_raises_nothing(url):
    now = NOV_1 + 9.5 * DAY
    _write(url, steady_spend_rows(NOV_1 - 31 * DAY, now, 5.0))   # $150 of $200 by the end
    alerter = Alerter(AlertConfig(), DatabaseLatch(url))
    watcher = ForecastWatcher(url, ForecastAlertConfig(), [
        BudgetRule(scope="team", name="core", usd=200, period="month")], {}, "UTC", alerter,
        keys=lambda db: [], clock=lambda: now)
    assert watcher.evaluate(now) == []


def load_rows(start_s: float, days: int, peak_per_hour: float, growth_per_day: float,
              model: str, seed: int) -> list[dict[str, Any]]:
    """Requests of ``model`` with a daily cycle whose peak is ``peak_per_hour`` on the
    last day, growing by ``growth_per_day`` (compounding) each day before."""
    rng = np.random.default_rng(seed)
    rows = []
    for h in range(days * 24):
        level = (1 + growth_per_day) ** (h / 24 - (days - 1))
        shape = 0.25 + 0.75 * max(0.0, math.sin(math.pi * ((h % 24) - 6) / 14))
        n = rng.poisson(peak_per_hour * shape * level)
        base = start_s + h * 3600
        for off in np.sort(rng.random(n)) * 3600:
            rows.append(_row(base + off, model=model, user_id="svc", prompt_tokens=50,
                             completion_tokens=20))
    return rows


def test_a_load_trend_crossing_80_percent_alerts_and_daily_peaks_do_not(url):
    now = NOV_1 + 28 * DAY + 1800
    # Both models: 120 requests/hour of capacity (rpm 2). "steady" peaks at 65 % every
    # day; "growing" peaks at 36 % four weeks ago and 70 % today, +2.5 % a day: over 80 %
    # in about six days.
    start = NOV_1
    rows = load_rows(start, 28, 78, 0.0, "steady", 1)
    rows += load_rows(start, 28, 84, 0.025, "growing", 2)
    _write(url, rows)
    capacity = {"steady": ModelCapacity(rpm=2), "growing": ModelCapacity(rpm=2)}
    alerter = Alerter(AlertConfig(), DatabaseLatch(url))
    watcher = ForecastWatcher(url, ForecastAlertConfig(capacity_horizon_days=7), [], capacity,
                              "UTC", alerter, keys=lambda db: [], clock=lambda: now)
    found = watcher.evaluate(now)
    assert [(a.kind, a.scope) for a in found] == [("capacity", "model:growing")]
    assert now < found[0].predicted_at < now + 7 * DAY
    assert "80%" in found[0].message


def test_monthly_growth_reads_a_trend_and_ignores_a_flat_cycle():
    hours = np.arange(28 * 24)
    cycle = 1 + 0.8 * np.sin(2 * np.pi * hours / 24)
    assert abs(monthly_growth(cycle)) < 0.01
    rising = cycle * (1.02 ** (hours / 24))
    assert monthly_growth(rising) == pytest.approx(1.02 ** 30 - 1, rel=0.02)


def test_projection_bounds_and_an_already_spent_budget():
    hist = np.full(24 * 14, 0.5)               # $12 a day, flat
    now = NOV_1 + 10 * DAY
    p = project_budget(hist, now - 14 * DAY, 120.0, 1000.0, now, NOV_1 + 30 * DAY)
    assert p.projected_usd == pytest.approx(120 + 20 * 12, rel=0.05)
    assert p.exhaustion_at is None
    assert p.projected_low_usd <= p.projected_usd <= p.projected_high_usd
    spent = project_budget(hist, now - 14 * DAY, 1500.0, 1000.0, now, NOV_1 + 30 * DAY)
    assert spent.exhaustion_at == now
