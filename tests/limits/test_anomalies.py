"""Cost anomalies against a seasonal baseline: an injected 10x hour is found, ordinary
daily and weekly peaks are not."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil

import pytest

from margin.limits.alerts import Alerter, MemoryLatch
from margin.limits.anomalies import (HourlySeries, baseline, detect, find_anomalies,
                                     hourly_costs)
from margin.limits.config import AlertConfig, AnomalyConfig
from margin.limits.watch import AnomalyWatcher, seconds_to_next_tick
from margin.metering.db import connect
from tests.limits.synthetic import add_spike, build_ledger

# A Thursday, noon UTC; the spike is on the Tuesday before, 10:00 UTC — a quiet hour for
# search (its peak is in the evening), which makes 10x of it still far below its peak.
NOW = dt.datetime(2025, 3, 20, 12, 0, tzinfo=dt.timezone.utc).timestamp()
SPIKE = dt.datetime(2025, 3, 18, 10, 0, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    d = tmp_path_factory.mktemp("anomalies")
    normal, spiked = str(d / "normal.db"), str(d / "spiked.db")
    build_ledger(normal, NOW)
    shutil.copy(normal, spiked)
    add_spike(spiked, "search", SPIKE, 10.0)
    return normal, spiked


def test_finds_the_injected_spike(ledgers):
    _, spiked = ledgers
    found = find_anomalies(connect(spiked), NOW - 7 * 86400, NOW, AnomalyConfig())
    hit = [a for a in found if (a.dimension, a.value) == ("feature", "search")]
    assert [a.hour_start_s for a in hit] == [SPIKE]
    assert hit[0].ratio > 5 and hit[0].score > 6
    # Whatever else is flagged is the same hour seen through search's team or model.
    assert {a.hour_start_s for a in found} == {SPIKE}
    assert ("team", "web") in {(a.dimension, a.value) for a in found}


def test_ordinary_daily_and_weekly_peaks_are_not_anomalies(ledgers):
    normal, _ = ledgers
    db = connect(normal)
    # Peaks are large: the busiest hour of a feature costs many times its quietest.
    series = hourly_costs(db, NOW - 28 * 86400, NOW)
    chat = series[("feature", "support-chat")].cost
    assert max(chat.values()) > 5 * sorted(chat.values())[len(chat) // 10]
    assert find_anomalies(db, NOW - 14 * 86400, NOW, AnomalyConfig()) == []


def test_robust_baseline_and_sparse_history():
    b = baseline([1.0, 1.1, 0.9, 1.0, 50.0], floor_usd=0.0)
    assert b.median_usd == 1.0 and b.scale_usd == pytest.approx(0.14826)  # 50 is ignored
    cfg = AnomalyConfig(min_history_days=5)
    series = HourlySeries({h: 1.0 for h in range(0, 24 * 3)} | {24 * 3: 20.0})
    assert detect({("feature", "new"): series}, [24 * 3], cfg) == []  # 3 days: too little
    series = HourlySeries({h: 1.0 for h in range(0, 24 * 6)} | {24 * 6: 20.0})
    (a,) = detect({("feature", "f"): series}, [24 * 6], cfg)
    assert a.ratio == 20.0 and a.baseline_usd == 1.0


def test_counting_noise_keeps_quiet_hours_quiet():
    # Usually one request of about 1 cent in this hour; today five. Without the Poisson
    # floor the median/MAD score would be huge; with it, five is unremarkable.
    hours = range(0, 24 * 10, 24)
    quiet = HourlySeries(cost={h: 0.01 for h in hours} | {240: 0.05},
                         count={h: 1 for h in hours} | {240: 5},
                         cost_sq={h: 0.0001 for h in hours} | {240: 0.0005})
    cfg = AnomalyConfig(min_cost_usd=0.001)
    assert detect({("feature", "quiet"): quiet}, [240], cfg) == []
    busy = HourlySeries(cost={h: 10.0 for h in hours} | {240: 50.0},
                        count={h: 1000 for h in hours} | {240: 5000},
                        cost_sq={h: 0.1 for h in hours} | {240: 0.5})
    assert [a.ratio for a in detect({("feature", "busy"): busy}, [240], cfg)] == [5.0]


def test_the_gateway_check_alerts_once_per_anomaly(ledgers):
    _, spiked = ledgers
    latch = MemoryLatch()
    alerter = Alerter(AlertConfig(), latch)
    watcher = AnomalyWatcher(spiked, AnomalyConfig(), alerter, clock=lambda: SPIKE + 3600 + 60)

    async def main() -> int:
        first = await watcher.check()
        await watcher.check()  # the next tick sees the same hour: no second alert
        await alerter.drain()
        return len(first)

    assert asyncio.run(main()) >= 1
    assert alerter.fired == len({(a.dimension, a.value) for a in watcher.last})
    assert seconds_to_next_tick(7200 + 10, 3600, 60) == 3650
