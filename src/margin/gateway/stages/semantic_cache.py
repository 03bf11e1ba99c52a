"""Semantic cache stage: a paraphrase of an earlier question, in the same scope, gets the
earlier answer.

The scope is everything besides the last user message that can change the answer: the
tenant, the model asked for, every output-changing parameter, and the system prompt and
earlier turns (hashed). The last user message is embedded with the local MiniLM model and
looked up; the guards and the verifier decide (see ``margin.cache.semantic``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson

from margin.cache.config import CacheConfig
from margin.cache.keys import canonical
from margin.cache.semantic import SemanticCache
from margin.types import RequestContext, Response
from margin.gateway.pipeline import Handler, Stage
from margin.gateway.services import Services
from margin.gateway.stages._answers import AnswerStore, cache_control, ttl_for

log = logging.getLogger("margin.cache")


def question_and_scope(ctx: RequestContext, tenant: str) -> tuple[str, str] | None:
    """The text to match on and the scope it is matched in; None when not applicable."""
    body = ctx.body
    if ctx.endpoint == "chat":
        messages = body.get("messages") or []
        last = messages[-1] if messages else None
        if not last or last.get("role") != "user" or not isinstance(last.get("content"), str):
            return None  # tool results, multimodal parts: not a question to paraphrase
        text = last["content"]
        rest = {**canonical("chat", body), "messages": messages[:-1]}
    elif ctx.endpoint == "completions" and isinstance(body.get("prompt"), str):
        text = body["prompt"]
        rest = {k: v for k, v in canonical("completions", body).items() if k != "prompt"}
    else:
        return None
    digest = hashlib.blake2b(orjson.dumps([tenant, rest], option=orjson.OPT_SORT_KEYS),
                             digest_size=16).hexdigest()
    return text.strip(), digest


class SemanticCacheStage(Stage):
    name = "semantic_cache"

    def __init__(self, cfg: CacheConfig, services: Services) -> None:
        self.cfg = cfg.semantic
        self.share = cfg.exact.share_across_tenants
        self.cache = SemanticCache(self.cfg, redis_url=cfg.redis_url)
        self.answers = AnswerStore(services.prices, "semantic")
        self.embedder: Any = None

    def sizes(self) -> dict[str, tuple[int, int | None]]:
        return {"semantic": (len(self.cache), None)}

    async def start(self) -> None:
        from margin.embedding import shared_embedder

        self.embedder = await asyncio.to_thread(shared_embedder, self.cfg.encoder_path)
        await self.cache.start(wait_for_redis_s=2.0)

    async def aclose(self) -> None:
        await self.answers.tasks.aclose()
        await self.cache.close()

    async def __call__(self, ctx: RequestContext, call_next: Handler) -> Response:
        off = ctx.overrides is not None and ctx.overrides.semantic_cache is False
        if off or ctx.cache != "miss" or (ctx.model is not None and not ctx.model.cache):
            return await call_next(ctx)
        found = question_and_scope(ctx, "*" if self.share else ctx.tenant)
        if found is None or not found[0]:
            return await call_next(ctx)
        text, scope = found
        no_cache, no_store = cache_control(ctx)
        vector = (await asyncio.to_thread(self.embedder.encode, [text]))[0]
        if not self.cfg.encoder_path:  # the router reuses only the bundled model's vector
            ctx.query_embedding = (text, vector)
        if not no_cache:
            hit = await self.cache.lookup(scope, text, vector)
            if hit is not None:
                ctx.cache_similarity = round(hit.similarity, 4)
                ctx.notes["semantic_score"] = round(hit.score, 4)
                return self.answers.serve(ctx, hit.value)
        response = await call_next(ctx)
        if no_store or response.status != 200:
            return response
        ttl_s = ttl_for(ctx, self.cfg.ttl_s)
        return self.answers.capture(
            ctx, response, lambda entry: self.cache.insert(scope, text, vector, entry, ttl_s))


def build(cfg: CacheConfig, services: Services) -> SemanticCacheStage | None:
    return SemanticCacheStage(cfg, services) if cfg.semantic.enabled else None
