"""Exact-match cache stage: the same canonical request in the same tenant scope gets the
stored answer, at no cost. Only complete, successful answers are stored."""

from __future__ import annotations

from typing import Any

from margin.cache.exact import ExactCache
from margin.cache.keys import cache_key
from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler
from margin.gateway.stages._answers import AnswerStore, cache_control, ttl_for


class ExactCacheStage:
    name = "exact_cache"

    def __init__(self, gateway: Any) -> None:
        cfg = gateway.settings.cache
        self.cfg = cfg.exact
        self.cache = ExactCache(cfg.exact, cfg.redis_url or gateway.settings.redis_url,
                                on_event=lambda e: gateway.metrics.events.labels(e).inc())
        self.answers = AnswerStore(gateway, "exact")
        gateway.on_close(self.cache.aclose)

    async def start(self) -> None:
        await self.cache.start()

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        if ctx.model is not None and not ctx.model.cache:
            return await call_next(ctx)
        no_cache, no_store = cache_control(ctx)
        temperature = ctx.body.get("temperature", 1.0)
        if (ctx.endpoint != "embeddings" and not self.cfg.cache_when_temperature_positive
                and isinstance(temperature, (int, float)) and temperature > 0):
            ctx.cache = "bypass"
            return await call_next(ctx)
        scope = "*" if self.cfg.share_across_tenants else ctx.tenant
        key = cache_key(ctx.endpoint, ctx.body, scope)
        if not no_cache:
            value, tier = await self.cache.get(key)
            if value is not None:
                ctx.notes["cache_tier"] = tier
                return self.answers.serve(ctx, value)
        if no_cache or no_store:
            ctx.cache = "bypass"
        response = await call_next(ctx)
        if no_store or response.status != 200 or ctx.cache == "semantic":
            return response
        ttl_s = ttl_for(ctx, self.cfg.ttl_s)
        return self.answers.capture(ctx, response, lambda entry: self.cache.put(key, entry, ttl_s))


def build(gateway: Any) -> ExactCacheStage | None:
    return ExactCacheStage(gateway) if gateway.settings.cache.exact.enabled else None
