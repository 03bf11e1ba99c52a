"""Exact-match cache stage: the same canonical request in the same tenant scope gets the
stored answer, at no cost. Only complete, successful answers are stored."""

from __future__ import annotations

from typing import Any, AsyncIterator

import orjson

from margin.cache.exact import ExactCache
from margin.cache.keys import cache_key
from margin.gateway.context import RequestContext, Response
from margin.gateway.pipeline import Handler
from margin.gateway.streaming import assemble, replay

TTL_HEADER = "x-margin-cache-ttl"


def encode_entry(meta: dict[str, Any], payload_raw: bytes) -> bytes:
    # orjson never writes a newline, so the first one splits metadata from the answer.
    return orjson.dumps(meta) + b"\n" + payload_raw


def decode_entry(value: bytes) -> tuple[dict[str, Any], bytes]:
    meta, _, payload = value.partition(b"\n")
    return orjson.loads(meta), payload


class ExactCacheStage:
    name = "exact_cache"

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        cfg = gateway.settings.cache
        self.cfg = cfg.exact
        self.cache = ExactCache(cfg.exact, cfg.redis_url or gateway.settings.redis_url,
                                on_event=lambda e: gateway.metrics.events.labels(e).inc())
        gateway.on_close(self.cache.aclose)

    async def start(self) -> None:
        await self.cache.start()

    def _cost_of(self, ctx: RequestContext) -> float:
        u = ctx.usage
        return self.gw.prices.price(ctx.served_model or "").cost_usd(
            u.prompt_tokens, u.completion_tokens, u.cached_tokens, ctx.compute_s)

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        if ctx.model is not None and not ctx.model.cache:
            return await call_next(ctx)
        control = ctx.headers.get("cache-control", "").lower()
        no_cache, no_store = "no-cache" in control, "no-store" in control
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
                return self._hit(ctx, value, tier)
        if no_cache or no_store:
            ctx.cache = "bypass"
        response = await call_next(ctx)
        if no_store or response.status != 200:
            return response
        ttl_s = self._ttl(ctx)
        if response.stream is not None:
            response.stream = self._capture(ctx, response.stream, key, ttl_s)
            return response
        raw = response.raw if response.raw is not None else orjson.dumps(
            response.payload, option=orjson.OPT_SERIALIZE_NUMPY)
        response.raw = raw
        self.cache.put(key, encode_entry(self._meta(ctx), raw), ttl_s)
        return response

    def _ttl(self, ctx: RequestContext) -> float:
        asked = ctx.headers.get(TTL_HEADER)
        if asked:
            try:
                return max(1.0, min(float(asked), 30 * 86400.0))
            except ValueError:
                pass
        return self.cfg.ttl_s

    def _meta(self, ctx: RequestContext) -> dict[str, Any]:
        u = ctx.usage
        return {"model": ctx.served_model, "provider": ctx.provider, "cost_usd": self._cost_of(ctx),
                "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens}

    def _hit(self, ctx: RequestContext, value: bytes, tier: str) -> Response:
        meta, raw = decode_entry(value)
        ctx.cache = "exact"
        ctx.served_model = meta.get("model") or ctx.served_model
        ctx.provider = meta.get("provider") or ctx.provider
        ctx.saved_usd = float(meta.get("cost_usd") or 0.0)
        ctx.notes["cache_tier"] = tier
        if ctx.stream and ctx.endpoint != "embeddings":
            payload = orjson.loads(raw)
            return Response(200, stream=self._replay(ctx, payload, meta))
        return Response(200, raw=raw)

    async def _replay(self, ctx: RequestContext, payload: dict[str, Any],
                      meta: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        last: dict[str, Any] = {}
        async for chunk in replay(payload, ctx.endpoint):
            if ctx.ttft_ms is None:
                ctx.ttft_ms = ctx.elapsed_ms()
            last = chunk
            yield chunk
        if (ctx.body.get("stream_options") or {}).get("include_usage"):
            p, c = meta.get("prompt_tokens", 0), meta.get("completion_tokens", 0)
            yield {**{k: last.get(k) for k in ("id", "object", "created", "model")},
                   "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c,
                                            "total_tokens": p + c}}

    async def _capture(self, ctx: RequestContext, stream: AsyncIterator[dict[str, Any]],
                       key: str, ttl_s: float) -> AsyncIterator[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        complete = False
        try:
            async for chunk in stream:
                chunks.append(chunk)
                yield chunk
            complete = True
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            # A stream cut short (error, client gone) is never stored.
            if complete and chunks and ctx.status == 200:
                payload = assemble(chunks, ctx.endpoint)
                self.cache.put(key, encode_entry(self._meta(ctx), orjson.dumps(payload)), ttl_s)


def build(gateway: Any) -> ExactCacheStage | None:
    return ExactCacheStage(gateway) if gateway.settings.cache.exact.enabled else None
