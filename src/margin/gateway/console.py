"""The console's read-only JSON API under ``/admin/`` (docs/admin-api.md): one handler per
page, each parsing its parameters (``console_params``), then building the page
(``console_pages``, ``limits/projections``) in a worker thread on a pooled connection.

    GET /admin/overview                     GET /admin/budgets
    GET /admin/spend?by=&bucket=&…          GET /admin/capacity?horizon=7d
    GET /admin/requests?limit=&cursor=&…    GET /admin/anomalies?since=7d
    GET /admin/requests/<request_id>        GET /admin/alerts
    GET /admin/quality?since=7d&by=optimization
"""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any, Callable

from margin.auth.admin import SpendAdmin
from margin.config import Settings
from margin.errors import BadRequest, NotFound
from margin.gateway import console_pages as pages
from margin.gateway import console_params as params
from margin.limits import projections
from margin.limits.forecasts import ForecastCache
from margin.metering.console_queries import DIMENSIONS
from margin.metering.request_log import BadCursor
from margin.metering.db import Database, connect
from margin.metering.quality_queries import QUALITY_GROUPS, quality_report
from margin.types import AdminRequest

DAY_S = 86_400
MAX_PAGE_ROWS = 500


class ReadPool:
    """A few open connections to the ledger, reused by the console's reads (opening a
    PostgreSQL connection costs more than most page queries)."""

    def __init__(self, url: str, size: int = 4) -> None:
        self.url = url
        self._idle: queue.LifoQueue[Database] = queue.LifoQueue(size)

    def run(self, job: Callable[[Database], Any]) -> Any:
        try:
            db = self._idle.get_nowait()
        except queue.Empty:
            db = connect(self.url)
        try:
            result = job(db)
            db.rollback()  # end the read transaction: the next read sees new rows
        except Exception:
            db.close()
            raise
        try:
            self._idle.put_nowait(db)
        except queue.Full:
            db.close()
        return result

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class Console:
    """Dispatches ``/admin/<page>`` to its handler."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.pool = ReadPool(settings.ledger.url)
        self.tz = settings.limits.timezone
        self.legacy_spend = SpendAdmin(settings.ledger.url, self.tz)
        self.forecasts = ForecastCache()
        self.handlers: dict[str, Callable[[AdminRequest], Any]] = {
            "overview": self.overview, "spend": self.spend, "budgets": self.budgets,
            "requests": self.requests, "capacity": self.capacity,
            "anomalies": self.anomalies, "alerts": self.alerts, "quality": self.quality,
            "experiments": self.experiments}

    def names(self) -> list[str]:
        return list(self.handlers)

    def handler(self, name: str) -> Callable[[AdminRequest], Any]:
        async def handle(req: AdminRequest) -> tuple[int, Any]:
            if name == "spend" and ("top_users" in req.query or req.param("by") == "day"):
                return await self.legacy_spend(req)   # the shapes /admin/spend had before
            if req.method not in ("GET", "HEAD"):
                raise NotFound(f"{req.method} /admin/{name}: the console API is read-only "
                               "(GET)", code="unknown_url")
            if req.path.strip("/") and name != "requests":
                raise NotFound(f"no such admin endpoint: /admin/{name}/{req.path[:100]}",
                               code="unknown_url")
            return 200, await self.handlers[name](req)
        return handle

    async def _run(self, job: Callable[[Database], Any]) -> Any:
        return await asyncio.to_thread(self.pool.run, job)

    # -- pages -------------------------------------------------------------------------
    async def overview(self, req: AdminRequest) -> Any:
        q = params.single(req, ("user", "team", "feature", "model", "key", "status", "cache"))
        now = self.clock()
        f = params.filters(q, now, None)
        return await self._run(lambda db: pages.overview(db, f, now, self.tz))

    async def spend(self, req: AdminRequest) -> Any:
        q = params.single(req, (*params.FILTERS, "by", "bucket", "top", "tz"))
        now = self.clock()
        f = params.filters(q, now, now - 7 * DAY_S)
        by = params.choice(q, "by", DIMENSIONS, "user")
        bucket = params.choice(q, "bucket", ("hour", "day"), "day")
        top = params.integer(q, "top", 10, 1, 100)
        return await self._run(lambda db: pages.spend(db, f, by, 3600 if bucket == "hour"
                                                      else DAY_S, top))

    async def requests(self, req: AdminRequest) -> Any:
        rid = req.path.strip("/")
        if rid:
            if "/" in rid or len(rid) > 200:
                raise NotFound("no such request", code="request_not_found")
            params.single(req, ())
            log_content = self.settings.ledger.log_content
            found = await self._run(lambda db: pages.request_detail(db, rid, log_content))
            if found is None:
                raise NotFound(f"no request with id {rid[:100]}", code="request_not_found")
            return found
        q = params.single(req, (*params.FILTERS, "limit", "cursor"))
        now = self.clock()
        f = params.filters(q, now, None)
        limit = params.integer(q, "limit", 50, 1, MAX_PAGE_ROWS)
        cursor = q.get("cursor") or None
        try:
            return await self._run(lambda db: pages.requests_page(db, f, limit, cursor))
        except BadCursor as exc:
            raise BadRequest(f"parameter cursor: {exc}", code="invalid_value") from None

    def _forecast_cfg(self) -> projections.ForecastAlertConfig:
        return self.settings.limits.forecasts

    def _alerts_now(self, db: Database, now: float) -> tuple[list[Any], list[Any], list[Any]]:
        return projections.evaluate(db, self.settings.limits.budgets, self.settings.capacity,
                                    self.tz, self._forecast_cfg(), now, self.forecasts)

    async def budgets(self, req: AdminRequest) -> Any:
        params.single(req, ())
        now = self.clock()

        def build(db: Database) -> Any:
            budgets, _, alerts = self._alerts_now(db, now)
            sent = projections.sent(db, "forecast:") + projections.sent(db, "budget:")
            out = []
            for b in budgets:
                entry = b.to_json()
                scope, _, name = b.scope.partition(":")
                threshold_prefix = f"budget:{scope}:{name}:{b.period}:"
                entry["alerts"] = [
                    {"kind": payload.get("type", "budget_threshold"), "at": at,
                     "message": payload.get("message", "")}
                    for key, at, payload in sent
                    if (key.startswith(threshold_prefix) and at >= b.period_start)
                    or (key.startswith("forecast:budget:" + b.scope + ":")
                        and at >= b.period_start)]
                entry["alerts"] += [{"kind": a.kind, "at": None, "message": a.message}
                                    for a in alerts if a.scope == b.scope and not any(
                                        k == a.key for k, _, _ in sent)]
                out.append(entry)
            return {"generated_at": now, "budgets": out}
        return await self._run(build)

    async def capacity(self, req: AdminRequest) -> Any:
        q = params.single(req, ("horizon",))
        horizon = params.duration(q, "horizon", self._forecast_cfg().capacity_horizon_days
                                  * DAY_S, 90 * DAY_S)
        now = self.clock()
        cfg = self._forecast_cfg()
        return await self._run(lambda db: {"generated_at": now, "horizon_s": horizon, "models": [
            m.to_json() for m in projections.capacity_reports(
                db, self.settings.capacity, now, horizon, cfg, self.forecasts)]})

    async def anomalies(self, req: AdminRequest) -> Any:
        q = params.single(req, ("since",))
        now = self.clock()
        since = params.instant(q, "since", now, now - 7 * DAY_S)
        assert since is not None
        cfg = self.settings.limits.anomalies
        # Only complete hours are judged: the answer changes when an hour completes.
        key = ("anomalies", int(since // 3600), int(now // 3600))
        return await self._run(lambda db: self.forecasts.get(
            key, lambda: pages.anomalies(db, since, now, cfg)))

    async def quality(self, req: AdminRequest) -> Any:
        q = params.single(req, ("since", "until", "by"))
        now = self.clock()
        since = params.instant(q, "since", now, now - 7 * DAY_S)
        until = params.instant(q, "until", now, None)
        by = params.choice(q, "by", QUALITY_GROUPS, "optimization")
        rows = await self._run(lambda db: quality_report(db, since, until, by))
        return {"generated_at": now, "since": since, "until": until, "by": by,
                "optimizations": [r.to_json(by) for r in rows]}

    async def alerts(self, req: AdminRequest) -> Any:
        params.single(req, ())
        now = self.clock()

        s = self.settings
        return await self._run(lambda db: projections.alerts_payload(
            db, s.limits.budgets, s.capacity, self.tz, self._forecast_cfg(), now,
            self.forecasts))

    async def experiments(self, req: AdminRequest) -> Any:
        """``?name=NAME&since=7d``: the same report as ``margin experiments report``;
        without ``name``: the configured experiments."""
        from margin.experiments.report import experiment_report

        q = params.single(req, ("name", "since"))
        configured = {e.name: e for e in self.settings.experiments}
        name = q.get("name")
        if not name:
            return {"experiments": [{"name": e.name, "enabled": e.enabled,
                                     "arms": [a.name for a in e.arms]}
                                    for e in configured.values()]}
        if len(name) > 200:
            raise BadRequest("name: at most 200 characters", code="invalid_parameter")
        now = self.clock()
        since = params.instant(q, "since", now, now - 7 * DAY_S)
        exp = configured.get(name)
        order = [a.name for a in exp.arms] if exp is not None else None
        return await self._run(lambda db: experiment_report(db, name, since, order))
