"""The gateway's long-lived parts, built once from settings: upstreams, prices, ledger,
metrics, API keys, alerts, the background services and the folded pipeline.

Stages get the narrow, read-only ``Services`` view of these (``gateway/services.py``) and
their own config section; nothing a stage builds is written back here. Start-up order:
ledger writer, background services, upstreams, stages; shutdown runs it in reverse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Protocol

from margin.auth.verifier import KeyVerifier
from margin.config import ModelConfig, Settings
from margin.errors import NotFound
from margin.gateway import pipeline
from margin.gateway.embeddings import embed_via
from margin.gateway.request_ids import new_request_id
from margin.gateway.services import RedisClients, Services
from margin.gateway.calibration import Calibrations, knobs_for
from margin.gateway.shadow import ShadowRunner
from margin.gateway.stages import build_stages
from margin.limits.alerts import Alerter, DatabaseLatch, RedisLatch
from margin.limits.projections import ForecastWatcher
from margin.limits.watch import AnomalyWatcher
from margin.metering.ledger import LedgerWriter
from margin.metering.pricing import PriceBook
from margin.observe.metrics import GatewayMetrics
from margin.quality.shared_spend import RedisShadowSpend
from margin.types import RequestContext, Response
from margin.upstreams.base import EmbedResult, Upstream
from margin.upstreams.registry import build_upstream

log = logging.getLogger("margin.gateway")


class BackgroundService(Protocol):
    """Something the gateway runs beside the request path (an alert sender, a watcher)."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class _Watcher:
    """An hourly check (cost anomalies, forecasts) as a background service."""

    def __init__(self, watcher: AnomalyWatcher | ForecastWatcher) -> None:
        self.watcher = watcher
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.watcher.run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelConfig] = {m.name: m for m in settings.models}
        self.upstreams: dict[str, Upstream] = {
            m.name: build_upstream(m, settings.resilience) for m in settings.models}
        self.prices = PriceBook(settings.models, settings.pricing)
        m = settings.metrics
        self.metrics = GatewayMetrics(
            models=[*self.models, *(r.name for r in settings.routes)],
            users=m.users, features=m.features)
        self.ledger = LedgerWriter(settings.ledger)
        self.metrics.watch_ledger(self._ledger_counts)
        self.redis = RedisClients()
        # Names a client may ask for besides models: the routes.
        self.routes: list[str] = [r.name for r in settings.routes]
        self.master_key: str | None = os.environ.get(settings.server.master_key_env) or None
        self.keys: KeyVerifier | None = None
        if self.master_key:
            auth = settings.auth
            self.keys = KeyVerifier(settings.ledger.url, auth, auth.redis_url or settings.redis_url,
                                    on_event=lambda e: self.metrics.events.labels(e).inc())
        self.alerter = self._alerter()
        self.background: list[BackgroundService] = [self.alerter]
        if self.keys is not None:
            self.background.append(self.keys)
        anomalies = settings.limits.anomalies
        if anomalies.enabled:
            self.background.append(_Watcher(AnomalyWatcher(settings.ledger.url, anomalies,
                                                            self.alerter)))
        forecasts = settings.limits.forecasts
        if forecasts.enabled:
            self.background.append(_Watcher(ForecastWatcher.for_settings(
                settings.ledger.url, forecasts, settings.limits.budgets, settings.capacity,
                settings.limits.timezone, self.alerter)))
        self.services = Services(
            models=self.models, upstreams=self.upstreams, prices=self.prices,
            metrics=self.metrics, ledger_url=settings.ledger.url, redis=self.redis,
            alerter=self.alerter, keys=self.keys, master_key=self.master_key)
        self.stages = build_stages(settings, self.services)
        url = settings.redis_url
        limits = settings.limits
        shadow_cfg = settings.quality.shadow
        self.shadows = ShadowRunner(
            shadow_cfg, self.models, self.upstreams, self.prices, self.metrics,
            self.ledger.submit, {r.name: list(r.tiers) for r in settings.routes},
            new_request_id, log_content=settings.ledger.log_content,
            spend=RedisShadowSpend(shadow_cfg, self.redis.client(url, limits.redis_timeout_s),
                                   limits.redis_prefix,
                                   retry_after_s=limits.redis_retry_after_s)
            if url and shadow_cfg.enabled else None)
        self.calibrations = Calibrations(
            settings.quality, knobs_for(settings.quality, self.stages), self.metrics,
            self.redis.client(url, settings.limits.redis_timeout_s) if url else None,
            settings.limits.redis_prefix)
        self.shadows.on_result.append(self.calibrations.on_result)
        self.handler = pipeline.build(self.stages, self.dispatch)
        self.metrics.watch_caches(self.cache_sizes)
        self.started = False
        # Set on SIGTERM (gateway/server.py): readiness answers 503 from then on.
        self.draining = False

    @property
    def auth_enabled(self) -> bool:
        return self.keys is not None

    def _alerter(self) -> Alerter:
        """Alerts fire once across replicas: the latch is Redis when limits share one,
        else a table in the ledger database."""
        limits = self.settings.limits
        url = limits.redis_url or self.settings.redis_url
        latch = (RedisLatch(self.redis.client(url, limits.redis_timeout_s), limits.redis_prefix)
                 if url else DatabaseLatch(self.settings.ledger.url))
        return Alerter(limits.alerts, latch)

    def cache_sizes(self) -> dict[str, tuple[int, int | None]]:
        """Each cache's entries and bytes in this process (bytes None where not tracked)."""
        out: dict[str, tuple[int, int | None]] = {}
        for stage in self.stages:
            sizes = getattr(stage, "sizes", None)
            if sizes is not None:
                out.update(sizes())
        return out

    def _ledger_counts(self) -> dict[str, float]:
        c = self.ledger.counters
        return {"written": c.written, "spooled": c.spooled, "replayed": c.replayed,
                "queued": self.ledger.pending, "db_up": 1.0 if self.ledger.db_healthy else 0.0}

    async def start(self) -> None:
        t0 = time.perf_counter()
        await asyncio.to_thread(self.ledger.start)
        for service in self.background:
            await service.start()
        await asyncio.gather(*(u.start() for u in self.upstreams.values()))
        for stage in self.stages:
            await stage.start()
        await self.shadows.start()
        await self.calibrations.start()
        self.started = True
        log.info("gateway ready in %.1f s: models %s", time.perf_counter() - t0,
                 ", ".join(self.models))

    async def stop(self) -> None:
        # Shadows in flight finish (or are cancelled) while upstreams and the ledger are up.
        for part in [self.shadows, self.calibrations, *reversed(self.stages),
                     *reversed(self.background)]:
            try:
                await part.aclose()
            except Exception:
                log.exception("error while stopping %s", type(part).__name__)
        await asyncio.gather(*(u.aclose() for u in self.upstreams.values()),
                             return_exceptions=True)
        await self.redis.aclose()
        # Every database call is bounded, so the writer's last flush is too: one call, then
        # the spool. Past that the stuck batch stays in the journal (nothing is lost).
        cfg = self.settings.ledger
        await asyncio.to_thread(self.ledger.close,
                                cfg.write_timeout_s + cfg.connect_timeout_s + 2.0)
        self.metrics.close()

    async def dispatch(self, ctx: RequestContext) -> Response:
        """The pipeline's last step: call the upstream of ``ctx.model``."""
        if ctx.model is None:
            raise NotFound(f"no model resolved for '{ctx.requested_model}'",
                           code="model_not_found")
        ctx.served_model = ctx.model.name
        ctx.provider = ctx.model.provider
        upstream = self.upstreams[ctx.model.name]
        if ctx.endpoint == "embeddings":
            async def embed(inputs: list[Any], ctx: RequestContext) -> EmbedResult:
                call = ctx.call()
                try:
                    return await upstream.embed(inputs, call)
                finally:
                    ctx.absorb(call.result)

            return await embed_via(embed, ctx)
        call = ctx.call()
        try:
            response = await upstream.complete(call)
        except BaseException:
            ctx.absorb(call.result)
            raise
        if response.stream is None:
            ctx.absorb(call.result)
        else:
            response.stream = _absorb_at_end(ctx, call, response.stream)
        return response


async def _absorb_at_end(ctx: RequestContext, call: Any, stream: Any) -> Any:
    """Relay a stream; fold its call's usage and timings into the request when it ends
    (before the stages wrapped around it settle their accounts)."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        await stream.aclose()
        ctx.absorb(call.result)
