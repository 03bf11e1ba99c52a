"""Background loops of the budget stage: the hourly anomaly check, and the periodic read of
the ledger that keeps budget counters at least as high as recorded spend."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from margin.limits.alerts import Alerter
from margin.limits.anomalies import Anomaly, find_anomalies
from margin.limits.config import AnomalyConfig
from margin.metering.db import connect

log = logging.getLogger("margin.limits")


def seconds_to_next_tick(now_s: float, interval_s: float, offset_s: float) -> float:
    """Sleep until the next multiple of ``interval_s`` (+ ``offset_s``, so the hour is
    complete and the ledger writer has flushed it)."""
    return interval_s - (now_s % interval_s) + offset_s


async def every(interval_s: float, offset_s: float, job: Callable[[], Awaitable[None]],
                name: str, clock: Callable[[], float] = time.time) -> None:
    while True:
        await asyncio.sleep(seconds_to_next_tick(clock(), interval_s, offset_s))
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must survive a bad hour; the failure is logged
            log.exception("%s failed", name)


class AnomalyWatcher:
    """Every ``interval_s``: score the last complete hours and alert on each anomaly once."""

    def __init__(self, db_url: str, cfg: AnomalyConfig, alerter: Alerter,
                 clock: Callable[[], float] = time.time) -> None:
        self.db_url = db_url
        self.cfg = cfg
        self.alerter = alerter
        self.clock = clock
        self.last: list[Anomaly] = []

    def _scan(self, now_s: float) -> list[Anomaly]:
        db = connect(self.db_url)
        try:
            # Two hours back, so one late tick does not skip an hour.
            return find_anomalies(db, now_s - 2 * 3600, now_s, self.cfg)
        finally:
            db.close()

    async def check(self) -> list[Anomaly]:
        now = self.clock()
        found = await asyncio.to_thread(self._scan, now)
        self.last = found
        for a in found:
            hour = time.strftime("%Y-%m-%d %H:00 UTC", time.gmtime(a.hour_start_s))
            self.alerter.fire(f"anomaly:{a.dimension}:{a.value}:{a.hour_start_s}", 3 * 86400, {
                "type": "cost_anomaly", **a.as_dict(),
                "message": (f"{a.dimension} '{a.value}' cost {a.cost_usd:.4f} USD in the hour "
                            f"from {hour}, {a.ratio:g}x its usual {a.baseline_usd:.4f} USD "
                            f"(robust score {a.score:g})")})
        return found

    async def run(self) -> None:
        offset = min(120.0, self.cfg.interval_s / 10)
        await every(self.cfg.interval_s, offset, self.check, "anomaly check", self.clock)
