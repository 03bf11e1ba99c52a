"""Exact-match cache stage: the same canonical request in the same tenant scope gets the
stored answer, at no cost. Only complete, successful answers are stored."""

from __future__ import annotations

from margin.cache.config import CacheConfig
from margin.cache.exact import ExactCache
from margin.cache.keys import cache_key
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.gateway.stages._answers import AnswerStore, cache_control, ttl_for
from margin.types import RequestContext, Response


class ExactCacheStage(Stage):
    name = "exact_cache"

    def __init__(self, cfg: CacheConfig, services: Services) -> None:
        self.cfg = cfg.exact
        events = services.metrics.events
        self.cache = ExactCache(cfg.exact, cfg.redis_url,
                                on_event=lambda e: events.labels(e).inc())
        self.answers = AnswerStore(services.prices, "exact")

    async def start(self) -> None:
        await self.cache.start()

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        """Entries and value bytes this process holds (the in-memory tier)."""
        return {"exact": (len(self.cache.l1), self.cache.l1.bytes)}

    async def aclose(self) -> None:
        await self.answers.tasks.aclose()
        await self.cache.aclose()

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


def build(cfg: CacheConfig, services: Services) -> ExactCacheStage | None:
    return ExactCacheStage(cfg, services) if cfg.exact.enabled else None
